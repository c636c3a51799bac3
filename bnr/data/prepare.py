"""Bring the selected dataset onto disk in the VOC layout and describe it (download stage).

Where things go (``params.yaml`` defaults)::

    data/downloads/                      verified archives (outside the DVC out: not cached by
                                         DVC, kept when DVC clears the out before a rerun)
    data/sbd/                            extracted SBD (VOC only, used to build train_aug)
    data/voc2012/VOCdevkit/VOC2012/      = datasets.voc2012.root (inside the out data/voc2012)
    data/coco2014/                       = datasets.coco2014.root (the out itself)

The readers' roots are fixed by :func:`~bnr.data.voc_prepare.prepare_voc2012` and
:func:`~bnr.data.coco.prepare_coco2014` (``<data>/voc2012/VOCdevkit/VOC2012`` and
``<data>/coco2014``); ``datasets.<dataset>.root`` must name the same folder, else a BnrError
names both paths.

``download.mirrors`` (source name -> URL, names from :data:`bnr.data.sources.SOURCES`) replaces
a source's URL; the built-in checksum still applies, so a mirror must serve the same file.

Pretrained weight files are fetched by the ``weights`` stage (:mod:`bnr.weights.fingerprints`), not
here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bnr.data.sources import mirror_overrides
from bnr.data.synthetic import SyntheticSpec, generate_synthetic
from bnr.errors import BnrError

log = logging.getLogger(__name__)

SPLITS = {"voc2012": ("train", "val", "train_aug"), "coco2014": ("train", "val")}


@dataclass(frozen=True)
class DownloadRequest:
    """What the download stage brings onto disk, as plain values (the stage fills it from
    params: ``dataset``, ``datasets.<dataset>.root`` / ``test_split`` and the ``download``
    block)."""

    dataset: str  # synthetic, voc2012 or coco2014
    root: str  # datasets.<dataset>.root
    test_split: str = ""  # datasets.<dataset>.test_split ("" = none)
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)
    mirrors: Mapping[str, str] = field(default_factory=dict)  # source name -> URL
    existing_root: str = ""  # data already on disk ("" = download)
    allow_unverified: bool = False
    data_dir: str = "data"  # parent of the stage's output <data_dir>/<dataset> (its cmd)


def _same_path(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _link_existing_root(prepared: Path, root: Path, dataset: str, data_dir: Path) -> None:
    """Make ``root`` (params) a symlink to the existing ``prepared`` folder, or fail."""
    out = data_dir / dataset
    if root.exists() or root.is_symlink() or _same_path(root, out):
        raise BnrError(
            f"download: the prepared {dataset} root {prepared} is not datasets.{dataset}.root "
            f"({root}); set datasets.{dataset}.root={prepared}, or remove {root} so it can "
            "be linked to the existing copy"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    root.symlink_to(prepared.resolve(), target_is_directory=True)
    log.info("%s: linked to the existing copy %s", root, prepared)


def split_statistics(
    root: str | os.PathLike[str], splits: Sequence[str], class_names: Sequence[str]
) -> dict:
    """Image counts and per-class image frequencies per split, from the image-level labels."""
    from bnr.data.voc import read_image_labels, read_split

    stats: dict = {}
    for split in splits:
        ids = read_split(root, split)
        labels = read_image_labels(root, ids, class_names)
        n = len(ids)
        per_class = {}
        for cls in range(1, len(class_names)):
            count = sum(cls in labels[i] for i in ids)
            per_class[class_names[cls]] = {"images": count, "image_frequency": count / max(n, 1)}
        n_classes = [len(labels[i]) for i in ids]
        stats[split] = {
            "images": n,
            "mean_classes_per_image": sum(n_classes) / max(n, 1),
            "multi_label_fraction": sum(k > 1 for k in n_classes) / max(n, 1),
            "classes": per_class,
        }
    return stats


def test_split_record(dataset: str, root: str | os.PathLike[str], test_split: str) -> dict:
    """``{"images": n, "note": why none}`` of the configured ``test_split`` (VOC test images
    are optional: the trainval archive has none; evaluate then writes an empty server archive)."""
    from bnr.data.checks import server_archive_skip
    from bnr.data.voc import read_split

    why = server_archive_skip(dataset, root, test_split)
    if why and dataset != "voc2012":
        return {"images": 0, "note": ""}
    if why:
        return {"images": 0, "note": f"no test split for the evaluation server: {why}"}
    return {"images": len(read_split(root, test_split)), "note": ""}


def prepare_dataset(
    request: DownloadRequest,
    *,
    sources: Mapping[str, Any] | None = None,
    progress: bool = True,
    download_kwargs: Mapping[str, Any] | None = None,
) -> dict:
    """Generate or fetch ``request.dataset`` under its root; return the dataset.json content.

    ``synthetic`` is generated (output unchanged from before real data existed). ``voc2012``
    and ``coco2014`` are downloaded, verified and converted (see the module docstring), or
    taken from ``download.existing_root`` after a layout check (a VOC folder is completed in
    place, with ``datasets.<dataset>.root`` symlinked to it when that path does not exist yet).
    ``sources`` replaces the source table (tests); ``download_kwargs`` go to
    :func:`~bnr.data.download.download_file`.
    """
    root = Path(request.root)
    download_kwargs = {"allow_unverified": request.allow_unverified,
                       **dict(download_kwargs or {})}
    if request.dataset == "synthetic":
        spec = request.synthetic
        stats = generate_synthetic(root, spec)
        return {
            "dataset": "synthetic",
            "root": str(root),
            "generator": asdict(spec),
            "splits": stats,
        }
    if request.dataset not in SPLITS:
        raise BnrError(f"download: unknown dataset {request.dataset!r}")
    from bnr.data.classes import class_names

    overrides = mirror_overrides(request.mirrors, sources)
    existing = request.existing_root or None
    common = {
        "sources": sources,
        "mirror_overrides": overrides,
        "existing_root": existing,
        "progress": progress,
        "download_kwargs": download_kwargs,
    }
    if request.dataset == "voc2012":
        from bnr.data.voc_prepare import prepare_voc2012, voc_counts_check

        prepared = prepare_voc2012(Path(request.data_dir), **common,
                                   with_test="voc2012_test" in request.mirrors)
        counts_check = voc_counts_check
    else:
        from bnr.data.coco import coco_counts_check, prepare_coco2014

        prepared = prepare_coco2014(Path(request.data_dir), workers=min(8, os.cpu_count() or 1),
                                    **common)
        counts_check = coco_counts_check
    if not _same_path(prepared, root):
        if existing is None:
            raise BnrError(
                f"download: {request.dataset} was prepared at {prepared} but "
                f"datasets.{request.dataset}.root is {root}; set "
                f"datasets.{request.dataset}.root={prepared}"
            )
        _link_existing_root(prepared, root, request.dataset, Path(request.data_dir))
    check = counts_check(root)
    test = test_split_record(request.dataset, root, request.test_split)
    if test["note"]:
        check["warnings"] = [*check["warnings"], test["note"]]
    return {
        "dataset": request.dataset,
        "root": str(root),
        "prepared_at": str(prepared),
        "existing_root": existing or "",
        "splits": split_statistics(root, SPLITS[request.dataset], class_names(request.dataset)),
        "counts": check["counts"],
        "published_counts": check["published_counts"],
        "matches_published": check["matches_published"],
        "warnings": check["warnings"],
        "test_images": test["images"],
    }
