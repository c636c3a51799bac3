import numpy as np
import pytest
from PIL import Image

from bnr.data.voc import VocSegmentation, read_image_labels
from bnr.errors import BnrError
from bnr.io import write_label_png

NAMES = ("background", "a", "b", "c")


def test_reader_items(voc_tree):
    ds = VocSegmentation(voc_tree, "train", NAMES)
    assert len(ds) == 3
    item = ds[1]
    assert item["id"] == "b"
    assert item["image"].shape == (24, 32, 3) and item["image"].dtype == np.uint8
    assert item["mask"].shape == (24, 32)
    assert item["labels"].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_labels_from_xml_annotations(voc_tree):
    (voc_tree / "cls_labels.json").unlink()
    ann = voc_tree / "Annotations"
    ann.mkdir()
    (ann / "a.xml").write_text(
        "<annotation><object><name>c</name></object><object><name>a</name></object>"
        "<object><name>c</name></object></annotation>"
    )
    assert read_image_labels(voc_tree, ["a"], NAMES) == {"a": [1, 3]}
    with pytest.raises(BnrError, match=r"b.xml: no cls_labels.json and no annotation"):
        read_image_labels(voc_tree, ["b"], NAMES)


def test_missing_image_in_split(voc_tree):
    (voc_tree / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(BnrError, match=r"JPEGImages/b.jpg: listed in the split but missing"):
        VocSegmentation(voc_tree, "train", NAMES)


def test_truncated_jpeg(voc_tree):
    path = voc_tree / "JPEGImages" / "a.jpg"
    path.write_bytes(path.read_bytes()[:200])
    ds = VocSegmentation(voc_tree, "train", NAMES)
    with pytest.raises(BnrError, match=r"a.jpg: unreadable or truncated image") as err:
        ds[0]
    assert "\n" not in str(err.value)


def test_mask_with_invalid_value(voc_tree):
    mask = np.zeros((24, 32), np.uint8)
    mask[0, 0] = 7
    write_label_png(voc_tree / "SegmentationClass" / "a.png", mask)
    ds = VocSegmentation(voc_tree, "train", NAMES)
    with pytest.raises(BnrError, match=r"a.png: mask value 7 is neither a class index"):
        ds[0]


def test_mask_size_mismatch(voc_tree):
    write_label_png(voc_tree / "SegmentationClass" / "a.png", np.zeros((10, 10), np.uint8))
    ds = VocSegmentation(voc_tree, "train", NAMES)
    with pytest.raises(BnrError, match=r"a.png: mask size 10x10 differs from its image 32x24"):
        ds[0]


def test_empty_and_missing_split(voc_tree):
    (voc_tree / "ImageSets/Segmentation/train.txt").write_text("\n")
    with pytest.raises(BnrError, match=r"train.txt: split is empty"):
        VocSegmentation(voc_tree, "train", NAMES)
    with pytest.raises(BnrError, match=r"nope.txt: split file not found"):
        VocSegmentation(voc_tree, "nope", NAMES)


def test_rgb_mask_is_rejected(voc_tree):
    Image.new("RGB", (32, 24)).save(voc_tree / "SegmentationClass" / "a.png")
    with pytest.raises(BnrError, match="palette or greyscale"):
        VocSegmentation(voc_tree, "train", NAMES)[0]
