"""Checks a stage runs on its inputs before its long work (splits, images, masks, test split).

A stage that would fail after an hour of inference on a missing file fails at its start instead,
with the same one-line ``BnrError``. The optional VOC test split is the exception: its absence is
a reason recorded in the metrics (no server archive), never an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bnr.data.voc import check_split_images, read_image_labels, read_split
from bnr.errors import BnrError


def check_split_files(root: str | Path, split: str, mask_dir: str | None = None) -> list[str]:
    """The ids of ``split`` after checking that each has a non-empty JPEG (and its ``mask_dir``
    PNG when given); the first missing file is a BnrError naming it."""
    root = Path(root)
    if not root.is_dir():
        raise BnrError(f"{root}: dataset root not found (run the download stage)")
    ids = read_split(root, split)
    check_split_images(root, ids)
    for img_id in ids if mask_dir is not None else ():
        path = root / mask_dir / f"{img_id}.png"
        if not path.is_file():
            raise BnrError(f"{path}: mask of an image of split {split!r} is missing")
    return ids


def server_archive_skip(dataset: str, root: str | Path, test_split: str) -> str:
    """Why the evaluation-server archive is not written ("" when it is): another dataset, no
    ``test_split`` configured, or its list or images absent (the VOC 2012 trainval download
    has no test split; the test images come from the separate, login-only test archive).
    ``root`` and ``test_split``: ``datasets.<dataset>.root`` / ``.test_split``."""
    if dataset != "voc2012":
        return f"the server layout is VOC2012's, dataset is {dataset}"
    if not test_split:
        return f"datasets.{dataset}.test_split is empty"
    root = Path(root)
    split_file = root / "ImageSets" / "Segmentation" / f"{test_split}.txt"
    if not split_file.is_file():
        return (f"{split_file} not found (the VOC 2012 trainval download has no test split; "
                "add the VOC 2012 test images to write the archive)")
    ids = read_split(root, test_split)  # present but unreadable / duplicated: an error
    missing = [i for i in ids if not (root / "JPEGImages" / f"{i}.jpg").is_file()]
    if missing:
        return (f"{len(missing)} of {len(ids)} {test_split} images are missing "
                f"(e.g. {root / 'JPEGImages' / (missing[0] + '.jpg')})")
    return ""


def check_stage_inputs(root: str | Path, splits: Sequence[tuple[str, str | None]],
                       per_image: tuple[Path, str] | None = None,
                       labels_of: Sequence[str] | None = None) -> None:
    """Before a stage's work: each ``(split, mask_dir or None)`` lists only present, non-empty
    images (and masks), and ``per_image = (folder, suffix)``, the files an earlier stage wrote
    for each image of the first split, are all there. A folder absent altogether passes: the
    stage names it (DVC runs the stage that writes it first). ``labels_of``: the class names,
    for a stage that reads the image-level labels (cls_labels.json checked for each split)."""
    first_ids: list[str] = []
    for split, mask_dir in splits:
        ids = check_split_files(root, split, mask_dir)
        if labels_of is not None:
            read_image_labels(root, ids, labels_of)
        first_ids = first_ids or ids
    if per_image is None or not Path(per_image[0]).is_dir():
        return
    folder, suffix = Path(per_image[0]), per_image[1]
    for img_id in first_ids:
        path = folder / f"{img_id}{suffix}"
        if not path.is_file():
            raise BnrError(f"{path}: missing (is {folder} from another split or an older run? "
                           "re-run the stage that writes it)")


def split_overlap(root: str | Path, eval_split: str, train_splits: Sequence[str],
                  allow: bool, allow_key: str) -> dict:
    """The ids ``eval_split`` shares with the ``train_splits`` (what a model learned from):
    an error naming the first shared id unless ``allow`` (``allow_key``, recorded in the
    protocol with the count); returns ``{"images": n, "allowed": allow, "splits": [...]}``.
    A training split whose file is absent (a model trained elsewhere) is listed under
    ``"absent"``, not compared."""
    eval_ids = read_split(root, eval_split)
    shared: dict[str, str] = {}
    checked, absent = [], []
    for split in dict.fromkeys(train_splits):  # each once, in order
        if not (Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt").is_file():
            absent.append(split)
            continue
        checked.append(split)
        ids = set(read_split(root, split))
        for img_id in eval_ids:
            if img_id in ids:
                shared.setdefault(img_id, split)
    if shared and not allow:
        img_id, split = next(iter(shared.items()))
        path = Path(root) / "ImageSets" / "Segmentation" / f"{eval_split}.txt"
        raise BnrError(f"{path}: image id {img_id!r} is also in training split {split!r} "
                       f"({len(shared)} shared: its mIoU would score training images; "
                       f"{allow_key}: true accepts it)")
    return {"images": len(shared), "allowed": allow, "splits": checked, "absent": absent}
