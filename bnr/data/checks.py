"""Checks a stage runs on its inputs before its long work (splits, images, masks, test split).

A stage that would fail after an hour of inference on a missing file fails at its start instead,
with the same one-line ``BnrError``. The optional VOC test split is the exception: its absence is
a reason recorded in the metrics (no server archive), never an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from bnr.data.voc import check_split_images, read_split
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


def check_splits(root: str | Path, splits: Sequence[tuple[str, str | None]]) -> None:
    """:func:`check_split_files` for each ``(split, mask_dir or None)``."""
    for split, mask_dir in splits:
        check_split_files(root, split, mask_dir)


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


# What each stage reads: (split key, mask folder key or None) and whether it reads data/<dir>
# files per image of its first split (written by an earlier stage).
STAGE_INPUTS: dict[str, tuple[list[tuple[str, str | None]], str | None]] = {
    "train_cam": ([("train_split", None)], None),
    "infer_seeds": ([("infer_split", None)], None),
    "eval_seeds": ([("seed_eval_split", "gt_dir")], "cams"),
    "train_affinity": ([("infer_split", None)], "cams"),
    "random_walk": ([("infer_split", None)], "cams"),
    "crf": ([("infer_split", None), ("seed_eval_split", "gt_dir")], "rw_labels"),
    "train_segmenter": ([("infer_split", None)], "pseudo_labels"),
    "evaluate": ([("val_split", "gt_dir")], None),
}
_SUFFIX = {"cams": ".npz", "rw_labels": ".png", "pseudo_labels": ".png"}


class DataBlock(Protocol):
    """A ``datasets.<dataset>`` block: ``root`` and the split / mask-folder keys of
    :data:`STAGE_INPUTS` as attributes."""

    root: str


def check_stage_inputs(data: DataBlock, stage: str, data_dir: Path = Path("data")) -> None:
    """Before ``stage``'s work: its splits list only present, non-empty images (and masks), and
    the per-image files of the stage before it exist. Unknown stages (download, report) pass.
    ``data``: the dataset's params block (``params.data``)."""
    if stage not in STAGE_INPUTS:
        return
    splits, made_by_earlier = STAGE_INPUTS[stage]
    first_ids: list[str] = []
    for split_key, mask_key in splits:
        ids = check_split_files(data.root, getattr(data, split_key),
                                getattr(data, mask_key) if mask_key else None)
        first_ids = first_ids or ids
    if made_by_earlier is None or not (data_dir / made_by_earlier).is_dir():
        return  # absent altogether: the stage names it (DVC runs the earlier stage first)
    folder = data_dir / made_by_earlier
    for img_id in first_ids:
        path = folder / f"{img_id}{_SUFFIX[made_by_earlier]}"
        if not path.is_file():
            raise BnrError(f"{path}: missing (is {folder} from another split or an older run? "
                           "re-run the stage that writes it)")
