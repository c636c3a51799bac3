"""prepare_voc2012 end to end: tiny VOC tar + SBD tgz in the real layouts, served locally."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from bnr.data.voc_prepare import (
    build_train_aug,
    check_voc_layout,
    prepare_voc2012,
    read_sbd_mat,
    voc_counts_check,
)
from bnr.errors import BnrError
from bnr.io import read_label_png, voc_palette

try:
    from tests.httpserver import LocalServer
except ImportError:  # tests/ is not a package and the repo root is not on sys.path
    from httpserver import LocalServer

H, W = 6, 8
A, B, C, D, E, F = (f"2008_00000{i}" for i in range(1, 7))
VOC_TRAIN, VOC_VAL = [A, B], [C, D]
SBD_TRAIN, SBD_VAL = [B, C, E], [F, D]
VOC_GT = {  # VOC SegmentationClass: class i+1 with a 255 boundary row
    img_id: np.pad(np.full((H - 1, W), i + 1, np.uint8), ((0, 1), (0, 0)), constant_values=255)
    for i, img_id in enumerate([A, B, C, D])
}
SBD_GT = {img_id: np.full((H, W), 10 + i, np.uint8) for i, img_id in enumerate([B, C, D, E, F])}
FAST = {"backoff": 0.0, "timeout": 5.0}


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    rgb = np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buf, format="JPEG")
    return buf.getvalue()


def _png(label: np.ndarray) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(label, mode="P")
    im.putpalette(voc_palette())  # without a palette Pillow may merge indices on save
    im.save(buf, format="PNG")
    return buf.getvalue()


def _xml(names: list[str]) -> bytes:
    objs = "".join(f"<object><name>{n}</name></object>" for n in names)
    return f"<annotation>{objs}</annotation>".encode()


def _mat(label: np.ndarray) -> bytes:
    buf = io.BytesIO()
    gt = {"Segmentation": label, "CategoriesPresent": np.unique(label).astype(np.uint8)}
    scipy.io.savemat(buf, {"GTcls": gt})
    return buf.getvalue()


def _targz(files: dict[str, bytes], gz: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def voc_tar() -> bytes:
    base = "VOCdevkit/VOC2012/"
    files = {f"{base}JPEGImages/{i}.jpg": _jpeg(n) for n, i in enumerate([A, B, C, D, E])}
    files |= {f"{base}Annotations/{i}.xml": _xml(["cat"]) for i in [A, B, C, D, E, F]}
    files |= {f"{base}SegmentationClass/{i}.png": _png(m) for i, m in VOC_GT.items()}
    seg = f"{base}ImageSets/Segmentation/"
    files[f"{seg}train.txt"] = "".join(f"{i}\n" for i in VOC_TRAIN).encode()
    files[f"{seg}val.txt"] = "".join(f"{i}\n" for i in VOC_VAL).encode()
    files[f"{seg}trainval.txt"] = "".join(f"{i}\n" for i in VOC_TRAIN + VOC_VAL).encode()
    return _targz(files, gz=False)


def voc_test_tar() -> bytes:
    """The VOC 2012 test archive's layout: test JPEGs and the segmentation test list."""
    base = "VOCdevkit/VOC2012/"
    ids = ["2009_000001", "2009_000002"]
    files = {f"{base}JPEGImages/{i}.jpg": _jpeg(20 + n) for n, i in enumerate(ids)}
    files[f"{base}ImageSets/Segmentation/test.txt"] = "".join(f"{i}\n" for i in ids).encode()
    return _targz(files, gz=False)


def sbd_tgz() -> bytes:
    base = "benchmark_RELEASE/dataset/"
    files = {f"{base}img/{i}.jpg": _jpeg(10 + n) for n, i in enumerate(SBD_GT)}
    files |= {f"{base}cls/{i}.mat": _mat(m) for i, m in SBD_GT.items()}
    files[f"{base}train.txt"] = "".join(f"{i}\n" for i in SBD_TRAIN).encode()
    files[f"{base}val.txt"] = "".join(f"{i}\n" for i in SBD_VAL).encode()
    return _targz(files, gz=True)


@pytest.fixture(scope="module")
def archives() -> dict[str, bytes]:
    return {"voc": voc_tar(), "sbd": sbd_tgz()}


@pytest.fixture
def served(archives: dict[str, bytes]) -> Iterator[tuple[LocalServer, dict]]:
    with LocalServer() as srv:
        overrides = {
            "voc2012_trainval": {
                "url": srv.add("voc/VOCtrainval_11-May-2012.tar", archives["voc"]),
                "md5": hashlib.md5(archives["voc"]).hexdigest(),
            },
            "sbd": {
                "url": srv.add("sbd/benchmark.tgz", archives["sbd"]),
                "md5": hashlib.md5(archives["sbd"]).hexdigest(),
            },
        }
        yield srv, overrides


def test_prepare_voc2012_end_to_end(served: tuple[LocalServer, dict], tmp_path: Path) -> None:
    srv, overrides = served
    data = tmp_path / "data"
    root = prepare_voc2012(data, mirror_overrides=overrides, progress=False, download_kwargs=FAST)
    assert root == data / "voc2012" / "VOCdevkit" / "VOC2012"
    check_voc_layout(root, require_aug=True)

    train_aug = (root / "ImageSets/Segmentation/train_aug.txt").read_text().split()
    assert train_aug == sorted({A, B, E, F})  # (VOC train | SBD train | SBD val) - VOC val
    aug = root / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.glob("*.png")) == [A, B, C, D, E, F]
    for img_id in (A, B, C, D):  # VOC ground truth wins (incl. its 255 boundary)
        np.testing.assert_array_equal(read_label_png(aug / f"{img_id}.png"), VOC_GT[img_id])
    for img_id in (E, F):  # SBD-only ids come from cls/*.mat
        np.testing.assert_array_equal(read_label_png(aug / f"{img_id}.png"), SBD_GT[img_id])
    with Image.open(aug / f"{E}.png") as im:
        assert im.mode == "P"
    assert (root / "JPEGImages" / f"{F}.jpg").is_file()  # copied from SBD img/
    np.testing.assert_array_equal(  # SegmentationClass itself untouched
        read_label_png(root / "SegmentationClass" / f"{B}.png"), VOC_GT[B]
    )

    report = voc_counts_check(root)
    assert report["counts"] == {"train": 2, "val": 2, "train_aug": 4, "SegmentationClassAug": 6}
    assert not report["matches_published"] and len(report["warnings"]) == 4
    assert "10582" in " ".join(report["warnings"])

    # A rerun downloads nothing (archives verified, extraction and build skipped).
    hits = dict(srv.hits)
    assert prepare_voc2012(data, mirror_overrides=overrides, progress=False) == root
    assert dict(srv.hits) == hits
    assert not list((data / "downloads").glob("*.part"))

    # The VOC-layout reader reads the result.
    from bnr.data.classes import VOC_CLASSES
    from bnr.data.voc import VocSegmentation

    ds = VocSegmentation(root, "train_aug", VOC_CLASSES, mask_dir="SegmentationClassAug")
    item = ds[ds.ids.index(E)]
    assert item["mask"].shape == (H, W) and int(item["mask"].max()) == SBD_GT[E].max()


def test_existing_root_completed_in_place(
    served: tuple[LocalServer, dict], archives: dict[str, bytes], tmp_path: Path
) -> None:
    srv, overrides = served
    src = tmp_path / "mine"
    src.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archives["voc"])) as tf:
        tf.extractall(src, filter="data")
    root = prepare_voc2012(
        tmp_path / "data",
        existing_root=src / "VOCdevkit",
        mirror_overrides=overrides,
        progress=False,
        download_kwargs=FAST,
    )
    assert root == src / "VOCdevkit" / "VOC2012"
    assert srv.hits["/voc/VOCtrainval_11-May-2012.tar"] == 0  # only SBD was needed
    assert srv.hits["/sbd/benchmark.tgz"] == 1
    assert (root / "ImageSets/Segmentation/train_aug.txt").read_text().split() == [A, B, E, F]


def test_existing_sbd_folder_and_layout_errors(archives: dict[str, bytes], tmp_path: Path) -> None:
    for name in ("voc", "sbd"):
        with tarfile.open(fileobj=io.BytesIO(archives[name])) as tf:
            tf.extractall(tmp_path / name, filter="data")
    root = tmp_path / "voc" / "VOCdevkit" / "VOC2012"
    stats = build_train_aug(root, tmp_path / "sbd", progress=False)
    assert stats == {
        "train_aug": 4,
        "SegmentationClassAug": 6,
        "from_sbd": 2,
        "from_voc": 4,
        "copied_sbd_jpegs": 1,
    }
    check_voc_layout(root, require_aug=True)
    (root / "JPEGImages" / f"{A}.jpg").unlink()
    with pytest.raises(BnrError, match=rf"JPEGImages: 1 of 2 ids of train.txt .*{A}\.jpg"):
        check_voc_layout(root)
    shutil.rmtree(root / "SegmentationClass")
    (root / "ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(
        BnrError, match=r"missing SegmentationClass, ImageSets/Segmentation/val\.txt"
    ):
        check_voc_layout(root)
    with pytest.raises(BnrError, match="missing SegmentationClass"):
        prepare_voc2012(tmp_path / "data", existing_root=tmp_path / "voc", progress=False)


def test_sbd_mat_with_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "x.mat"
    path.write_bytes(_mat(np.full((2, 2), 30, np.uint8)))
    with pytest.raises(BnrError, match=r"x\.mat: label value 30"):
        read_sbd_mat(path)
    path.write_bytes(b"not a mat file")
    with pytest.raises(BnrError, match="unreadable SBD class annotation"):
        read_sbd_mat(path)
