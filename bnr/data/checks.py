"""Checks a stage runs on its inputs before its long work (splits, images, masks, test split).

A stage that would fail after an hour of inference on a missing file fails at its start instead,
with the same one-line ``BnrError``. The optional VOC test split is the exception: its absence is
a reason recorded in the metrics (no server archive), never an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bnr.config import Params
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


def server_archive_skip(params: Params) -> str:
    """Why the evaluation-server archive is not written ("" when it is): another dataset, no
    ``test_split`` configured, or its list or images absent (the VOC 2012 trainval download
    has no test split; the test images come from the separate, login-only test archive)."""
    data = params.data
    if params.dataset != "voc2012":
        return f"the server layout is VOC2012's, dataset is {params.dataset}"
    if not data.test_split:
        return f"datasets.{params.dataset}.test_split is empty"
    root = Path(data.root)
    split_file = root / "ImageSets" / "Segmentation" / f"{data.test_split}.txt"
    if not split_file.is_file():
        return (f"{split_file} not found (the VOC 2012 trainval download has no test split; "
                "add the VOC 2012 test images to write the archive)")
    ids = read_split(root, data.test_split)  # present but unreadable / duplicated: an error
    missing = [i for i in ids if not (root / "JPEGImages" / f"{i}.jpg").is_file()]
    if missing:
        return (f"{len(missing)} of {len(ids)} {data.test_split} images are missing "
                f"(e.g. {root / 'JPEGImages' / (missing[0] + '.jpg')})")
    return ""
