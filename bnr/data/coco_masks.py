"""MS COCO 2014 instance annotations -> semantic masks and image-level labels (the VOC-layout
``SegmentationClass/<id>.png`` and ``cls_labels.json`` of :func:`bnr.data.coco.prepare_coco2014`).

Mask values: 0 background, 1..80 the COCO categories in ascending category-id order, 255
ignore. Overlaps: non-crowd instances are painted largest area first (ties by annotation id),
so a smaller instance on top of a larger one keeps its pixels (smaller wins, deterministic).
Crowd (``iscrowd=1``) regions are 255 (ignored in evaluation, like COCO-Stuff's ``void``)
except where a non-crowd instance covers them. Image-level labels are the categories of all
annotations of the image, crowd ones included (the classes visibly present).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bnr.data.classes import COCO_CATEGORY_IDS, COCO_CLASSES
from bnr.errors import BnrError
from bnr.io import write_label_png

SPLIT_DIRS = {"train": "train2014", "val": "val2014"}
IGNORE = 255


def annotation_path(root: str | os.PathLike[str], split: str) -> Path:
    """``<root>/annotations/instances_<train|val>2014.json``."""
    if split not in SPLIT_DIRS:
        raise BnrError(f"unknown COCO split {split!r} (known: {', '.join(SPLIT_DIRS)})")
    return Path(root) / "annotations" / f"instances_{SPLIT_DIRS[split]}.json"


def load_coco(path: str | os.PathLike[str]) -> Any:
    """Load an instances json with pycocotools (quietly) after checking its categories."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    path = Path(path)
    if not path.is_file():
        raise BnrError(f"{path}: COCO annotation file not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise BnrError(f"{path}: unreadable COCO annotation file ({exc})") from None
    cats = sorted(coco.cats.values(), key=lambda c: c["id"])
    got = [(c["id"], c["name"]) for c in cats]
    want = list(zip(COCO_CATEGORY_IDS, COCO_CLASSES[1:], strict=True))
    if got != want:
        diff = next(((g, w) for g, w in itertools.zip_longest(got, want) if g != w), None)
        raise BnrError(
            f"{path}: categories differ from the 80 COCO classes ({len(got)} categories; "
            f"first difference: {diff})"
        )
    return coco


def category_index(coco: Any) -> dict[int, int]:
    """COCO category id -> class index 1..80 (ascending id order)."""
    return {cat_id: i + 1 for i, cat_id in enumerate(sorted(coco.getCatIds()))}


def image_id_name(coco: Any, img_id: int) -> str:
    """The file stem of COCO image ``img_id`` (our image id)."""
    return Path(coco.imgs[img_id]["file_name"]).stem


def _ann_mask(coco: Any, ann: Mapping[str, Any]) -> np.ndarray | None:
    if not ann.get("segmentation"):
        return None
    return coco.annToMask(ann).astype(bool)


def coco_semantic_mask(coco: Any, img_id: int) -> np.ndarray:
    """Semantic mask of one image: uint8 (H, W), 0 bg, 1..80 classes, 255 crowd-only regions.

    Crowd regions are painted 255 first; non-crowd instances are then painted largest area
    first (ties: lower annotation id first), so smaller instances win overlaps.
    """
    info = coco.imgs[img_id]
    index = category_index(coco)
    mask = np.zeros((info["height"], info["width"]), np.uint8)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id], iscrowd=None))
    for ann in anns:
        if ann.get("iscrowd", 0):
            m = _ann_mask(coco, ann)
            if m is not None:
                mask[m] = IGNORE
    solid = [a for a in anns if not a.get("iscrowd", 0)]
    for ann in sorted(solid, key=lambda a: (-float(a.get("area", 0.0)), a["id"])):
        m = _ann_mask(coco, ann)
        if m is not None:
            mask[m] = index[ann["category_id"]]
    return mask


def coco_image_labels(coco: Any) -> dict[str, list[int]]:
    """{image id: sorted class indices 1..80} from all annotations (crowd included)."""
    index = category_index(coco)
    labels: dict[str, set[int]] = {image_id_name(coco, i): set() for i in coco.imgs}
    for ann in coco.anns.values():
        labels[image_id_name(coco, ann["image_id"])].add(index[ann["category_id"]])
    return {k: sorted(v) for k, v in labels.items()}


_WORKER_COCO: Any = None
_WORKER_OUT: Path | None = None


def _write_one(img_id: int) -> None:
    out = _WORKER_OUT / f"{image_id_name(_WORKER_COCO, img_id)}.png"  # type: ignore[operator]
    write_label_png(out, coco_semantic_mask(_WORKER_COCO, img_id))


def build_coco_masks(
    coco_root: str | os.PathLike[str],
    split: str,
    *,
    coco: Any = None,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, int]:
    """Write ``SegmentationClass/<id>.png`` for every image of ``split`` ('train' or 'val').

    Masks already present are kept (each is written atomically, so present means complete);
    a rerun only writes the missing ones. Returns ``{"images", "written", "skipped"}``.
    """
    from tqdm import tqdm

    global _WORKER_COCO, _WORKER_OUT
    root = Path(coco_root)
    coco = load_coco(annotation_path(root, split)) if coco is None else coco
    out = root / "SegmentationClass"
    out.mkdir(parents=True, exist_ok=True)
    present = {p.name for p in os.scandir(out)} if out.is_dir() else set()
    todo = [i for i in sorted(coco.imgs) if f"{image_id_name(coco, i)}.png" not in present]
    _WORKER_COCO, _WORKER_OUT = coco, out
    try:
        bar = tqdm(total=len(todo), desc=f"COCO {split} masks", disable=not progress)
        if workers > 1 and len(todo) > 1:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(workers) as pool:
                for _ in pool.imap_unordered(_write_one, todo, chunksize=64):
                    bar.update()
        else:
            for img_id in todo:
                _write_one(img_id)
                bar.update()
        bar.close()
    finally:
        _WORKER_COCO, _WORKER_OUT = None, None
    return {"images": len(coco.imgs), "written": len(todo), "skipped": len(coco.imgs) - len(todo)}
