"""Fetch PASCAL VOC 2012 + SBD and build the WSSS ``train_aug`` set (download stage).

Produced layout (``data_dir`` when downloading; an ``existing_root`` is completed in place)::

    <data_dir>/downloads/VOCtrainval_11-May-2012.tar, benchmark.tgz   verified archives
    <data_dir>/sbd/benchmark_RELEASE/dataset/{img,cls,inst,train.txt,val.txt}
    <data_dir>/voc2012/VOCdevkit/VOC2012/                                 <- returned root
        JPEGImages/<id>.jpg              (17,125 images)
        Annotations/<id>.xml
        SegmentationClass/<id>.png       (2,913 VOC ground truths, 255 = boundary/ignore)
        SegmentationClassAug/<id>.png    (12,031 = SBD cls/*.mat as PNG, VOC PNG wins where both)
        ImageSets/Segmentation/{train,val,trainval}.txt     (VOC: 1,464 / 1,449 / 2,913 ids)
        ImageSets/Segmentation/train_aug.txt                 (10,582 ids)

``train_aug`` = (VOC train | SBD train | SBD val) - VOC val, sorted, as in the WSSS literature.
``SegmentationClassAug`` holds a PNG for every id of SBD train+val and of VOC SegmentationClass.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bnr.data.archives import safe_extract
from bnr.data.download import fetch_source
from bnr.data.sources import SOURCES, Source, compare_with_published, resolve_source
from bnr.data.voc import read_utf8
from bnr.errors import BnrError
from bnr.io import atomic_path, write_label_png, write_text

log = logging.getLogger(__name__)

PUBLISHED_COUNTS = {"train": 1464, "val": 1449, "train_aug": 10582, "SegmentationClassAug": 12031}
NUM_VOC_CLASSES = 21
_REQUIRED = (
    "JPEGImages",
    "SegmentationClass",
    "ImageSets/Segmentation/train.txt",
    "ImageSets/Segmentation/val.txt",
)


def find_voc_root(path: str | os.PathLike[str]) -> Path:
    """``path`` itself, ``path/VOC2012`` or ``path/VOCdevkit/VOC2012``: the first that has
    ``JPEGImages``; ``path`` if none has (so the layout check names what is missing)."""
    path = Path(path)
    for cand in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    return path


def read_id_list(path: Path) -> list[str]:
    """Ids of a split file (first token of each non-empty line)."""
    if not path.is_file():
        raise BnrError(f"{path}: split file not found")
    text = read_utf8(path, "split file")
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def check_voc_layout(root: str | os.PathLike[str], *, require_aug: bool = False) -> None:
    """One-line BnrError naming every missing piece of a VOC2012 folder, and the first listed
    id without its JPEG / ground truth PNG. ``require_aug`` also checks SegmentationClassAug
    and train_aug.txt."""
    root = Path(root)
    if not root.is_dir():
        raise BnrError(f"{root}: VOC2012 folder not found")
    required = list(_REQUIRED)
    if require_aug:
        required += ["SegmentationClassAug", "ImageSets/Segmentation/train_aug.txt"]
    missing = [p for p in required if not (root / p).exists()]
    if missing:
        raise BnrError(f"{root}: not a complete VOC2012 folder, missing {', '.join(missing)}")
    checks = [("train", "SegmentationClass"), ("val", "SegmentationClass")]
    if require_aug:
        checks.append(("train_aug", "SegmentationClassAug"))
    for split, mask_dir in checks:
        ids = read_id_list(root / "ImageSets" / "Segmentation" / f"{split}.txt")
        if not ids:
            raise BnrError(f"{root}/ImageSets/Segmentation/{split}.txt: split is empty")
        for sub, ext in (("JPEGImages", ".jpg"), (mask_dir, ".png")):
            lacking = [i for i in ids if not (root / sub / f"{i}{ext}").is_file()]
            if lacking:
                raise BnrError(
                    f"{root / sub}: {len(lacking)} of {len(ids)} ids of {split}.txt have no "
                    f"{ext} file (first: {lacking[0]}{ext})"
                )


def voc_counts_check(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Counts of the prepared set against the published ones, for dataset.json.

    Never fails: a difference (e.g. a tiny test tree) becomes a line in ``warnings``.
    """
    root = Path(root)
    counts: dict[str, int | None] = {}
    for split in ("train", "val", "train_aug"):
        path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        counts[split] = len(read_id_list(path)) if path.is_file() else None
    aug = root / "SegmentationClassAug"
    counts["SegmentationClassAug"] = len(list(aug.glob("*.png"))) if aug.is_dir() else None
    return compare_with_published(counts, PUBLISHED_COUNTS, "the published VOC 2012 set")


def read_sbd_mat(path: str | os.PathLike[str]) -> np.ndarray:
    """The class label map ``GTcls.Segmentation`` of an SBD ``cls/<id>.mat`` as uint8 (H, W)."""
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        seg = np.asarray(mat["GTcls"].Segmentation)
    except (
        OSError,
        ValueError,
        KeyError,
        AttributeError,
        TypeError,
        NotImplementedError,
        MatReadError,
    ) as exc:
        raise BnrError(f"{path}: unreadable SBD class annotation ({exc})") from None
    if seg.ndim != 2:
        raise BnrError(f"{path}: GTcls.Segmentation must be 2-D, got shape {seg.shape}")
    bad = (seg >= NUM_VOC_CLASSES) & (seg != 255) | (seg < 0)
    if bad.any():
        raise BnrError(f"{path}: label value {int(seg[bad][0])} is not a VOC class (0..20)")
    return seg.astype(np.uint8)


def find_sbd_dataset(path: str | os.PathLike[str]) -> Path:
    """The SBD ``dataset`` folder (with cls/, img/, train.txt, val.txt) at or below ``path``."""
    path = Path(path)
    for cand in (path, path / "dataset", path / "benchmark_RELEASE" / "dataset"):
        if (cand / "cls").is_dir():
            missing = [p for p in ("train.txt", "val.txt") if not (cand / p).is_file()]
            if missing:
                raise BnrError(f"{cand}: SBD folder is missing {', '.join(missing)}")
            return cand
    raise BnrError(
        f"{path}: no SBD dataset folder found (expected benchmark_RELEASE/dataset/cls, "
        "train.txt, val.txt)"
    )


def build_train_aug(
    voc_root: str | os.PathLike[str], sbd_dir: str | os.PathLike[str], *, progress: bool = True
) -> dict[str, int]:
    """Write ``SegmentationClassAug/`` and ``ImageSets/Segmentation/train_aug.txt`` in voc_root.

    SBD ``cls/<id>.mat`` labels are converted to palette PNGs; where VOC has its own
    ``SegmentationClass/<id>.png`` that file is copied instead (VOC takes precedence). SBD
    images missing from ``JPEGImages`` are copied from SBD ``img/``. Returns counts.
    """
    from tqdm import tqdm

    voc_root, sbd = Path(voc_root), find_sbd_dataset(sbd_dir)
    seg_dir = voc_root / "ImageSets" / "Segmentation"
    voc_train = read_id_list(seg_dir / "train.txt")
    voc_val = set(read_id_list(seg_dir / "val.txt"))
    sbd_ids = set(read_id_list(sbd / "train.txt")) | set(read_id_list(sbd / "val.txt"))
    train_aug = sorted((set(voc_train) | sbd_ids) - voc_val)

    voc_gt = {p.stem for p in (voc_root / "SegmentationClass").glob("*.png")}
    all_ids = sorted(sbd_ids | voc_gt)
    copied_jpegs = 0
    for img_id in train_aug:
        jpg = voc_root / "JPEGImages" / f"{img_id}.jpg"
        if not jpg.is_file():
            src = sbd / "img" / f"{img_id}.jpg"
            if not src.is_file():
                raise BnrError(f"{jpg}: train_aug image missing from both VOC and SBD ({src})")
            shutil.copyfile(src, jpg)
            copied_jpegs += 1
    if copied_jpegs:
        log.warning("%s: copied %d SBD images missing from JPEGImages", voc_root, copied_jpegs)

    from_sbd = 0
    with atomic_path(voc_root / "SegmentationClassAug") as out:
        out.mkdir()
        for img_id in tqdm(all_ids, desc="SegmentationClassAug", disable=not progress):
            if img_id in voc_gt:
                shutil.copyfile(
                    voc_root / "SegmentationClass" / f"{img_id}.png", out / f"{img_id}.png"
                )
                continue
            mat = sbd / "cls" / f"{img_id}.mat"
            if not mat.is_file():
                raise BnrError(f"{mat}: SBD id listed in train/val.txt has no class annotation")
            write_label_png(out / f"{img_id}.png", read_sbd_mat(mat))
            from_sbd += 1
    write_text(seg_dir / "train_aug.txt", "".join(f"{i}\n" for i in train_aug))
    return {
        "train_aug": len(train_aug),
        "SegmentationClassAug": len(all_ids),
        "from_sbd": from_sbd,
        "from_voc": len(all_ids) - from_sbd,
        "copied_sbd_jpegs": copied_jpegs,
    }


def _aug_complete(root: Path) -> bool:
    aug_list = root / "ImageSets" / "Segmentation" / "train_aug.txt"
    if not ((root / "SegmentationClassAug").is_dir() and aug_list.is_file()):
        return False
    ids = read_id_list(aug_list)
    return bool(ids) and all((root / "SegmentationClassAug" / f"{i}.png").is_file() for i in ids)


def _fetch_and_extract(
    name: str,
    data_dir: Path,
    dest: Path,
    *,
    sources: Mapping[str, Source] | None,
    overrides: Mapping[str, Any] | None,
    require_checksum: bool,
    progress: bool,
    download_kwargs: Mapping[str, Any] | None,
) -> None:
    src = resolve_source(name, overrides, table=sources)
    archive = fetch_source(
        src,
        data_dir / "downloads",
        require_checksum=require_checksum,
        progress=progress,
        **dict(download_kwargs or {}),
    )
    safe_extract(archive, dest, progress=progress)


def add_test(root: Path, data_dir: Path, fetch: dict) -> None:
    """Add the segmentation ``test`` split of the VOC 2012 test archive to ``root``: its JPEGs,
    then ``ImageSets/Segmentation/test.txt`` (written last: a split file means complete)."""
    split_file = root / "ImageSets" / "Segmentation" / "test.txt"
    if split_file.is_file():
        log.info("%s: test split already present", root)
        return
    test_dir = data_dir / "voc2012_test"
    if not (find_voc_root(test_dir) / "JPEGImages").is_dir():
        _fetch_and_extract("voc2012_test", data_dir, test_dir, **fetch)
    test_root = find_voc_root(test_dir)
    ids = read_id_list(test_root / "ImageSets" / "Segmentation" / "test.txt")
    for img_id in ids:
        name = f"{img_id}.jpg"
        src, dest = test_root / "JPEGImages" / name, root / "JPEGImages" / name
        if not src.is_file():
            raise BnrError(f"{src}: listed in the test archive's test.txt but missing")
        if not dest.is_file():
            with atomic_path(dest) as tmp:
                shutil.copyfile(src, tmp)
    write_text(split_file, "".join(f"{i}\n" for i in ids))
    log.info("%s: added the test split (%d images)", root, len(ids))


def prepare_voc2012(
    data_dir: str | os.PathLike[str],
    *,
    sources: Mapping[str, Source] | None = None,
    mirror_overrides: Mapping[str, Any] | None = None,
    existing_root: str | os.PathLike[str] | None = None,
    existing_sbd: str | os.PathLike[str] | None = None,
    require_checksum: bool = False,
    progress: bool = True,
    download_kwargs: Mapping[str, Any] | None = None,
    with_test: bool = False,
) -> Path:
    """Make a complete VOC2012 folder with SegmentationClassAug and train_aug; return its path.

    Without ``existing_root`` the VOC trainval tar is downloaded (``sources`` table, default
    :data:`~bnr.data.sources.SOURCES`, with ``mirror_overrides`` from params) and extracted
    under ``data_dir/voc2012``. With it (a VOC2012 folder or a parent of one) its layout is
    checked and, if SegmentationClassAug/train_aug.txt are missing, they are built into it from
    ``existing_sbd`` or a downloaded SBD. Every step is skipped when its output is complete.
    ``download_kwargs`` are passed to :func:`~bnr.data.download.download_file`. ``with_test``:
    also fetch the VOC 2012 test archive and add its segmentation test split (:func:`add_test`).
    """
    data_dir = Path(data_dir)
    table = SOURCES if sources is None else sources
    fetch = {
        "sources": table,
        "overrides": mirror_overrides,
        "require_checksum": require_checksum,
        "progress": progress,
        "download_kwargs": download_kwargs,
    }
    if existing_root is not None:
        root = find_voc_root(existing_root)
    else:
        root = data_dir / "voc2012" / "VOCdevkit" / "VOC2012"
        if not (root / "JPEGImages").is_dir():
            _fetch_and_extract("voc2012_trainval", data_dir, data_dir / "voc2012", **fetch)
            if not (root / "JPEGImages").is_dir():
                raise BnrError(
                    f"{data_dir / 'voc2012'}: the VOC archive did not contain VOCdevkit/VOC2012"
                )
    check_voc_layout(root)
    if _aug_complete(root):
        log.info("%s: SegmentationClassAug and train_aug.txt already built", root)
    else:
        if existing_sbd is not None:
            sbd_dir = find_sbd_dataset(existing_sbd)
        else:
            sbd_dir = data_dir / "sbd"
            if not (sbd_dir / "benchmark_RELEASE" / "dataset" / "cls").is_dir():
                _fetch_and_extract("sbd", data_dir, sbd_dir, **fetch)
        stats = build_train_aug(root, sbd_dir, progress=progress)
        log.info("%s: built train_aug (%s)", root, stats)
    check_voc_layout(root, require_aug=True)
    if with_test:
        add_test(root, data_dir, fetch)
    for warning in voc_counts_check(root)["warnings"]:
        log.warning("%s: %s", root, warning)
    return root
