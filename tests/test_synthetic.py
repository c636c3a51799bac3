import hashlib
import json

import numpy as np
from PIL import Image

from bnr.data.classes import SYNTHETIC_CLASSES
from bnr.data.synthetic import SyntheticSpec, generate_synthetic, render_image


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    spec = SyntheticSpec(num_train=6, num_val=2, image_size=64, seed=5)
    generate_synthetic(tmp_path / "a", spec)
    generate_synthetic(tmp_path / "b", spec)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    generate_synthetic(tmp_path / "c", SyntheticSpec(num_train=6, num_val=2, image_size=64, seed=6))
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_voc_layout_palette_and_ignore(tmp_path):
    spec = SyntheticSpec(num_train=5, num_val=3, image_size=64)
    stats = generate_synthetic(tmp_path / "syn", spec)
    root = tmp_path / "syn"
    train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(train) == 5 and len(val) == 3 and not set(train) & set(val)
    labels = json.loads((root / "cls_labels.json").read_text())
    for img_id in train + val:
        im = Image.open(root / "JPEGImages" / f"{img_id}.jpg")
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)
        lab = Image.open(root / "SegmentationClass" / f"{img_id}.png")
        assert lab.mode == "P"  # palette PNG as VOC
        arr = np.asarray(lab)
        values = set(np.unique(arr).tolist())
        assert values <= set(range(len(SYNTHETIC_CLASSES))) | {255}
        assert 255 in values  # object boundaries are ignored
        assert labels[img_id] == sorted(values - {0, 255})
        assert 1 <= len(labels[img_id]) <= 3
    assert stats["train"]["images"] == 5 and stats["val"]["images"] == 3


def test_context_is_correlated_with_class():
    spec = SyntheticSpec(image_size=64, context_prob=0.9, stray_context_prob=0.05)
    with_ctx = without_ctx = 0
    n = 150
    for i in range(n):
        _, _, info = render_image(spec, np.random.default_rng([1, i]))
        with_ctx += sum(info["context"].values()) / max(len(info["context"]), 1)
        without_ctx += len(info["stray_context"]) / 6
    assert with_ctx / n > 0.75
    assert without_ctx / n < 0.1


def test_context_is_background_in_the_mask():
    spec = SyntheticSpec(image_size=96, context_prob=1.0, stray_context_prob=0.0, clutter=0)
    image, label, info = render_image(spec, np.random.default_rng(3))
    # the context ellipse changes pixels outside every object, but those stay background (0)
    assert all(info["context"].values())
    assert (label == 0).mean() > 0.3
