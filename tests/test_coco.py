"""COCO 2014 masks, labels and prepare_coco2014 end to end against tiny zips served locally."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from bnr.data.classes import COCO_CATEGORY_IDS, COCO_CLASSES
from bnr.data.coco import check_coco_layout, coco_counts_check, prepare_coco2014
from bnr.data.coco_masks import (
    build_coco_masks,
    coco_image_labels,
    coco_semantic_mask,
    load_coco,
)
from bnr.errors import BnrError
from bnr.io import read_label_png

try:
    from tests.httpserver import LocalServer
except ImportError:  # tests/ is not a package and the repo root is not on sys.path
    from httpserver import LocalServer

H, W = 10, 12
CATS = [
    {"id": i, "name": n, "supercategory": "x"}
    for i, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES[1:], strict=True)
]
PERSON, STOP_SIGN, TOOTHBRUSH, DOG = 1, 13, 90, 18  # -> class indices 1, 12, 80, 17
FAST = {"backoff": 0.0, "timeout": 5.0}


def _box(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    """Polygon of the pixel box [x0, x1) x [y0, y1) (pycocotools rasterisation convention)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _rle_box(x0: int, y0: int, x1: int, y1: int, *, compressed: bool) -> dict:
    m = np.zeros((H, W), np.uint8, order="F")
    m[y0:y1, x0:x1] = 1
    if compressed:
        rle = mask_utils.encode(np.asfortranarray(m))
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    flat = m.flatten(order="F")  # uncompressed RLE: run lengths starting with zeros
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return {"size": [H, W], "counts": [int(c) for c in counts]}


def _ann(ann_id: int, img: int, cat: int, seg: object, area: float, crowd: int = 0) -> dict:
    return {
        "id": ann_id,
        "image_id": img,
        "category_id": cat,
        "segmentation": seg,
        "area": area,
        "iscrowd": crowd,
        "bbox": [0, 0, 1, 1],
    }


def _img(img_id: int, split: str) -> dict:
    name = f"COCO_{split}2014_{img_id:012d}.jpg"
    return {"id": img_id, "file_name": name, "height": H, "width": W}


def instances(split: str) -> dict:
    if split == "train":
        images = [_img(1, "train"), _img(2, "train"), _img(3, "train")]
        anns = [
            # image 1: large person, a smaller stop sign on top of it (polygon), a crowd region
            # of dogs partly under the person, and a compressed-RLE toothbrush.
            _ann(10, 1, PERSON, _box(0, 0, 8, 8), area=64),
            _ann(11, 1, STOP_SIGN, _box(2, 2, 5, 5), area=9),
            _ann(12, 1, DOG, _rle_box(6, 6, 12, 10, compressed=False), area=24, crowd=1),
            _ann(13, 1, TOOTHBRUSH, _rle_box(0, 9, 3, 10, compressed=True), area=3),
            # image 2: a crowd only (label present, mask 255 there)
            _ann(20, 2, DOG, _rle_box(0, 0, 4, 4, compressed=False), area=16, crowd=1),
            # image 3: no annotations at all
        ]
    else:
        images = [_img(42, "val")]
        anns = [_ann(30, 42, TOOTHBRUSH, _box(1, 1, 4, 3), area=6)]
    return {"images": images, "annotations": anns, "categories": CATS, "info": {}, "licenses": []}


def _coco(split: str) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = instances(split)
        coco.createIndex()
    return coco


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    rgb = np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buf, format="JPEG")
    return buf.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def image_zip(split: str) -> bytes:
    names = [img["file_name"] for img in instances(split)["images"]]
    return _zip({f"{split}2014/{n}": _jpeg(i) for i, n in enumerate(names)})


def annotation_zip() -> bytes:
    return _zip(
        {
            f"annotations/instances_{s}2014.json": json.dumps(instances(s)).encode()
            for s in ("train", "val")
        }
    )


def test_semantic_mask_overlap_crowd_and_class_ids() -> None:
    coco = _coco("train")
    m = coco_semantic_mask(coco, 1)
    assert m.dtype == np.uint8 and m.shape == (H, W)
    assert m[0, 0] == 1 and m[7, 7] == 1  # person -> 1
    assert (m[2:5, 2:5] == 12).all()  # stop sign (id 13) -> 12, smaller wins over person
    assert m[7, 7] == 1  # person covers the crowd region where they overlap
    assert m[9, 11] == 255 and m[8, 8] == 255  # crowd-only pixels -> ignore
    assert (m[9, 0:3] == 80).all()  # toothbrush (id 90) -> 80, from compressed RLE
    assert m[0, 11] == 0  # background
    assert set(np.unique(m)) == {0, 1, 12, 80, 255}
    assert (coco_semantic_mask(coco, 2)[:4, :4] == 255).all()
    assert not coco_semantic_mask(coco, 3).any()
    labels = coco_image_labels(coco)
    assert labels == {
        "COCO_train2014_000000000001": [1, 12, 17, 80],
        "COCO_train2014_000000000002": [17],
        "COCO_train2014_000000000003": [],
    }
    assert len(COCO_CLASSES) == 81 and COCO_CLASSES[0] == "background"


def test_overlap_is_order_independent() -> None:
    coco = _coco("train")
    reference = coco_semantic_mask(coco, 1)
    data = instances("train")
    data["annotations"].reverse()
    with contextlib.redirect_stdout(io.StringIO()):
        rev = COCO()
        rev.dataset = data
        rev.createIndex()
    np.testing.assert_array_equal(coco_semantic_mask(rev, 1), reference)


@pytest.fixture(scope="module")
def zips() -> dict[str, bytes]:
    return {
        "coco2014_train": image_zip("train"),
        "coco2014_val": image_zip("val"),
        "coco2014_annotations": annotation_zip(),
    }


@pytest.fixture
def served(zips: dict[str, bytes]) -> Iterator[tuple[LocalServer, dict]]:
    names = {
        "coco2014_train": "train2014.zip",
        "coco2014_val": "val2014.zip",
        "coco2014_annotations": "annotations_trainval2014.zip",
    }
    with LocalServer() as srv:
        overrides = {
            key: {"url": srv.add(f"coco/{names[key]}", data), "md5": hashlib.md5(data).hexdigest()}
            for key, data in zips.items()
        }
        yield srv, overrides


def test_prepare_coco2014_end_to_end(served: tuple[LocalServer, dict], tmp_path: Path) -> None:
    srv, overrides = served
    data = tmp_path / "data"
    root = prepare_coco2014(
        data, mirror_overrides=overrides, progress=False, workers=2, download_kwargs=FAST
    )
    assert root == data / "coco2014"
    check_coco_layout(root)
    assert sorted(p.name for p in (root / "JPEGImages").iterdir()) == [
        "COCO_train2014_000000000001.jpg",
        "COCO_train2014_000000000002.jpg",
        "COCO_train2014_000000000003.jpg",
        "COCO_val2014_000000000042.jpg",
    ]
    assert not list(data.glob(".extract-*"))
    seg = root / "ImageSets" / "Segmentation"
    assert seg.joinpath("train.txt").read_text().split() == [
        "COCO_train2014_000000000001",
        "COCO_train2014_000000000002",
    ]  # image 3 has no annotation
    assert seg.joinpath("val.txt").read_text().split() == ["COCO_val2014_000000000042"]
    mask = read_label_png(root / "SegmentationClass" / "COCO_train2014_000000000001.png")
    np.testing.assert_array_equal(mask, coco_semantic_mask(_coco("train"), 1))
    val_mask = read_label_png(root / "SegmentationClass" / "COCO_val2014_000000000042.png")
    assert set(np.unique(val_mask)) == {0, 80} and (val_mask[1:3, 1:4] == 80).all()
    labels = json.loads((root / "cls_labels.json").read_text())
    assert labels["COCO_val2014_000000000042"] == [80]
    assert labels["COCO_train2014_000000000003"] == []
    report = coco_counts_check(root)
    assert report["counts"]["train"] == 2 and report["counts"]["val2014_images"] == 1
    assert not report["matches_published"] and "82783" in " ".join(report["warnings"])

    # Rerun: nothing downloaded again, no mask rewritten.
    hits = dict(srv.hits)
    before = (root / "SegmentationClass" / "COCO_val2014_000000000042.png").stat().st_mtime_ns
    assert prepare_coco2014(data, mirror_overrides=overrides, progress=False) == root
    assert dict(srv.hits) == hits
    after = (root / "SegmentationClass" / "COCO_val2014_000000000042.png").stat().st_mtime_ns
    assert before == after
    assert build_coco_masks(root, "val", progress=False) == {
        "images": 1,
        "written": 0,
        "skipped": 1,
    }

    # The VOC-layout reader reads it with the 81 COCO classes.
    from bnr.data.voc import VocSegmentation

    ds = VocSegmentation(root, "train", COCO_CLASSES)
    item = ds[0]
    assert item["id"] == "COCO_train2014_000000000001"
    assert item["labels"][[0, 1, 12, 17, 80]].tolist() == [1, 1, 1, 1, 1]
    assert int(item["labels"].sum()) == 5


def _official_layout(tmp_path: Path, zips: dict[str, bytes]) -> Path:
    existing = tmp_path / "official"
    for data in zips.values():
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            zf.extractall(existing)
    return existing


def test_existing_official_folder(zips: dict[str, bytes], tmp_path: Path) -> None:
    existing = _official_layout(tmp_path, zips)
    before = sorted(str(p) for p in existing.rglob("*"))
    root = prepare_coco2014(tmp_path / "data", existing_root=existing, progress=False)
    assert sorted(str(p) for p in existing.rglob("*")) == before  # nothing written there
    jpg = root / "JPEGImages" / "COCO_val2014_000000000042.jpg"
    assert jpg.is_symlink() and jpg.resolve() == (existing / "val2014" / jpg.name).resolve()
    check_coco_layout(root)
    # A layout error names what is missing.
    (existing / "val2014" / "COCO_val2014_000000000042.jpg").unlink()
    with pytest.raises(BnrError, match=r"1 of 1 images .* missing \(first: COCO_val2014_0+42"):
        prepare_coco2014(tmp_path / "data2", existing_root=existing, progress=False)
    shutil.rmtree(existing / "val2014")
    (existing / "annotations" / "instances_val2014.json").unlink()
    with pytest.raises(BnrError, match=r"missing annotations/instances_val2014\.json, val2014$"):
        check_coco_layout(existing, prepared=False)
    check_coco_layout(existing, ["train"], prepared=False)


def test_bad_annotation_file(tmp_path: Path) -> None:
    path = tmp_path / "instances_train2014.json"
    data = instances("train")
    data["categories"] = data["categories"][:79]
    path.write_text(json.dumps(data))
    with pytest.raises(BnrError, match="categories differ from the 80 COCO classes"):
        load_coco(path)
    path.write_text("{not json")
    with pytest.raises(BnrError, match=r"instances_train2014\.json"):
        load_coco(path)
