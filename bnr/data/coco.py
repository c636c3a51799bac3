"""MS COCO 2014 for WSSS: semantic masks from instance annotations, image labels, VOC layout.

``prepare_coco2014`` produces a folder that the VOC-layout reader (``bnr.data.voc``) reads
unchanged, with 81 classes (:data:`bnr.data.classes.COCO_CLASSES`, background first)::

    <data_dir>/downloads/{train2014,val2014,annotations_trainval2014}.zip   verified archives
    <data_dir>/coco2014/                                                 <- returned root
        JPEGImages/COCO_train2014_<12 digits>.jpg     all images of both splits, one flat folder
        JPEGImages/COCO_val2014_<12 digits>.jpg       (ids are unique across splits)
        annotations/instances_{train,val}2014.json    (and the other json files of the zip)
        SegmentationClass/<id>.png                    palette PNG, uint8 (H, W), see below
        ImageSets/Segmentation/train.txt              train2014 ids with >= 1 annotated class
        ImageSets/Segmentation/val.txt                val2014 ids with >= 1 annotated class
        cls_labels.json                               {id: sorted class indices 1..80}, every
                                                      image of the prepared splits

An image id is the file stem, e.g. ``COCO_val2014_000000000042``. With ``existing_root`` set to
an official COCO folder (``train2014/``, ``val2014/``, ``annotations/``) the same layout is
built under ``data_dir/coco2014`` with ``JPEGImages/`` entries as symlinks to the existing
images and ``annotations/`` json files as symlinks (nothing is written into the existing
folder); an ``existing_root`` that already has this layout is completed in place.

Masks and image labels come from :mod:`bnr.data.coco_masks`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bnr.data.archives import safe_extract
from bnr.data.coco_masks import (
    SPLIT_DIRS,
    annotation_path,
    build_coco_masks,
    coco_image_labels,
    load_coco,
)
from bnr.data.download import fetch_source
from bnr.data.sources import SOURCES, Source, compare_with_published, resolve_source
from bnr.errors import BnrError
from bnr.io import write_text

log = logging.getLogger(__name__)

ZIP_SOURCES = {"train": "coco2014_train", "val": "coco2014_val"}
# Official image counts of the 2014 splits (cocodataset.org).
PUBLISHED_COUNTS = {"train2014_images": 82783, "val2014_images": 40504}


def _listing(directory: Path) -> set[str]:
    return {e.name for e in os.scandir(directory)} if directory.is_dir() else set()


def _missing_images(coco: Any, image_dir: Path) -> list[str]:
    have = _listing(image_dir)
    return sorted(img["file_name"] for img in coco.imgs.values() if img["file_name"] not in have)


def check_coco_layout(
    root: str | os.PathLike[str], splits: Sequence[str] = ("train", "val"), *, prepared: bool = True
) -> None:
    """One-line BnrError naming what a COCO 2014 folder lacks.

    ``prepared=True`` checks the layout this module produces (JPEGImages, annotations,
    SegmentationClass, split lists, cls_labels.json); ``prepared=False`` the official one
    (``train2014/``, ``val2014/``, ``annotations/instances_*.json``).
    """
    root = Path(root)
    if not root.is_dir():
        raise BnrError(f"{root}: COCO folder not found")
    need = [f"annotations/instances_{SPLIT_DIRS[s]}.json" for s in splits]
    if prepared:
        need += ["JPEGImages", "SegmentationClass", "cls_labels.json"]
        need += [f"ImageSets/Segmentation/{s}.txt" for s in splits]
    else:
        need += [SPLIT_DIRS[s] for s in splits]
    missing = [p for p in need if not (root / p).exists()]
    if missing:
        kind = "prepared COCO 2014" if prepared else "COCO 2014"
        raise BnrError(f"{root}: not a complete {kind} folder, missing {', '.join(missing)}")
    if prepared:
        have_img, have_mask = _listing(root / "JPEGImages"), _listing(root / "SegmentationClass")
        for s in splits:
            path = root / "ImageSets" / "Segmentation" / f"{s}.txt"
            ids = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
            for sub, have, ext in (
                ("JPEGImages", have_img, ".jpg"),
                ("SegmentationClass", have_mask, ".png"),
            ):
                lacking = [i for i in ids if f"{i}{ext}" not in have]
                if lacking:
                    raise BnrError(
                        f"{root / sub}: {len(lacking)} of {len(ids)} ids of {s}.txt have no "
                        f"{ext} file (first: {lacking[0]}{ext})"
                    )


def coco_counts_check(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Image counts of a prepared folder against the official ones, for dataset.json.

    Never fails: differences (e.g. a tiny test set) are lines in ``warnings``.
    """
    root = Path(root)
    images = _listing(root / "JPEGImages")
    counts: dict[str, int | None] = {
        "train2014_images": sum(n.startswith("COCO_train2014_") for n in images),
        "val2014_images": sum(n.startswith("COCO_val2014_") for n in images),
    }
    for s in SPLIT_DIRS:
        path = root / "ImageSets" / "Segmentation" / f"{s}.txt"
        counts[s] = (
            sum(1 for ln in path.read_text().splitlines() if ln.strip()) if path.is_file() else None
        )
    return compare_with_published(counts, PUBLISHED_COUNTS, "the official COCO 2014 set")


def _move_tree_files(src: Path, dst: Path) -> int:
    """Move every file under ``src`` (recursively) into the flat folder ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    for dirpath, _, filenames in os.walk(src):
        for name in filenames:
            os.replace(os.path.join(dirpath, name), dst / name)
            n += 1
    return n


def _fetch_extract_move(
    name: str, data_dir: Path, target: Path, fetch: Mapping[str, Any], *, progress: bool
) -> None:
    src = resolve_source(name, fetch["overrides"], table=fetch["sources"])
    archive = fetch_source(
        src,
        data_dir / "downloads",
        require_checksum=fetch["require_checksum"],
        progress=progress,
        **dict(fetch["download_kwargs"] or {}),
    )
    tmp = data_dir / f".extract-{name}"
    safe_extract(archive, tmp, progress=progress)
    try:
        moved = _move_tree_files(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: %d files from %s", target, moved, archive.name)


def _link_existing(existing: Path, root: Path, splits: Iterable[str]) -> None:
    """Fill ``root`` with symlinks to an official COCO folder's images and annotations."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for s in splits:
        ann = root / "annotations" / f"instances_{SPLIT_DIRS[s]}.json"
        if not ann.exists():
            ann.symlink_to(annotation_path(existing, s).resolve())
    img_dir = root / "JPEGImages"
    img_dir.mkdir(parents=True, exist_ok=True)
    have = _listing(img_dir)
    for s in splits:
        src_dir = (existing / SPLIT_DIRS[s]).resolve()
        for entry in os.scandir(src_dir):
            if entry.name.endswith(".jpg") and entry.name not in have:
                (img_dir / entry.name).symlink_to(src_dir / entry.name)


def prepare_coco2014(
    data_dir: str | os.PathLike[str],
    *,
    sources: Mapping[str, Source] | None = None,
    mirror_overrides: Mapping[str, Any] | None = None,
    existing_root: str | os.PathLike[str] | None = None,
    splits: Sequence[str] = ("train", "val"),
    workers: int = 1,
    require_checksum: bool = False,
    progress: bool = True,
    download_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Build the VOC-layout COCO 2014 folder described in the module docstring; return it.

    Downloads (``sources`` table, default :data:`~bnr.data.sources.SOURCES`, with
    ``mirror_overrides`` from params) only what is missing; every step is skipped when its
    output is complete, so a rerun after an interruption continues where it stopped.
    """
    data_dir = Path(data_dir)
    for s in splits:
        if s not in SPLIT_DIRS:
            raise BnrError(f"unknown COCO split {s!r} (known: {', '.join(SPLIT_DIRS)})")
    fetch = {
        "sources": SOURCES if sources is None else sources,
        "overrides": mirror_overrides,
        "require_checksum": require_checksum,
        "download_kwargs": download_kwargs,
    }
    root = data_dir / "coco2014"
    if existing_root is not None:
        existing = Path(existing_root)
        if (existing / "JPEGImages").is_dir():
            root = existing
            missing = [
                str(annotation_path(root, s).relative_to(root))
                for s in splits
                if not annotation_path(root, s).is_file()
            ]
            if missing:
                raise BnrError(
                    f"{root}: not a complete COCO 2014 folder, missing {', '.join(missing)}"
                )
        else:
            check_coco_layout(existing, splits, prepared=False)
            _link_existing(existing, root, splits)
    elif not all(annotation_path(root, s).is_file() for s in splits):
        _fetch_extract_move(
            "coco2014_annotations", data_dir, root / "annotations", fetch, progress=progress
        )
        # The zip holds annotations/*.json: moved flat into root/annotations.

    labels: dict[str, list[int]] = {}
    for s in splits:
        coco = load_coco(annotation_path(root, s))
        missing = _missing_images(coco, root / "JPEGImages")
        if missing and existing_root is None:
            _fetch_extract_move(
                ZIP_SOURCES[s], data_dir, root / "JPEGImages", fetch, progress=progress
            )
            missing = _missing_images(coco, root / "JPEGImages")
        if missing:
            raise BnrError(
                f"{root / 'JPEGImages'}: {len(missing)} of {len(coco.imgs)} images of "
                f"{annotation_path(root, s).name} are missing (first: {missing[0]})"
            )
        stats = build_coco_masks(root, s, coco=coco, workers=workers, progress=progress)
        log.info("%s: %s masks %s", root, s, stats)
        split_labels = coco_image_labels(coco)
        labels.update(split_labels)
        ids = sorted(i for i, cls in split_labels.items() if cls)
        if len(ids) < len(split_labels):
            log.info(
                "%s: %d %s images without annotations left out of %s.txt",
                root,
                len(split_labels) - len(ids),
                s,
                s,
            )
        write_text(root / "ImageSets" / "Segmentation" / f"{s}.txt", "".join(f"{i}\n" for i in ids))
    labels_path = root / "cls_labels.json"
    if labels_path.is_file():  # keep labels of splits not prepared in this run
        old = json.loads(labels_path.read_text())
        labels = {**old, **labels}
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(labels.items()))
    write_text(labels_path, "{\n" + body + "\n}\n")
    check_coco_layout(root, splits)
    for warning in coco_counts_check(root)["warnings"]:
        log.warning("%s: %s", root, warning)
    return root
