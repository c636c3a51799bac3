import numpy as np
import pytest
import torch

from bnr.affinity.affinity_labels import pair_labels
from bnr.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    PadCropTransform,
    TrainTransform,
)
from bnr.models.pairs import pair_indices

pytestmark = pytest.mark.numerics  # float kernels: CI runs it again under AVX2


def _pattern(h, w):
    """An image whose red channel encodes the mask: mask = red // 60 (values 0..3)."""
    rng = np.random.default_rng(0)
    mask = np.zeros((h, w), np.uint8)
    for c in range(1, 4):
        y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
        mask[y : y + 10, x : x + 12] = c
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = mask * 60 + 20
    image[..., 1] = np.arange(w)[None, :] % 255
    return image, mask


def test_train_transform_keeps_image_and_mask_aligned():
    image, mask = _pattern(40, 60)
    tf = TrainTransform(crop_size=48, resize_long=(40, 90), color_jitter=(0, 0, 0, 0))
    for seed in range(10):
        torch.manual_seed(seed)
        img, msk = tf(image, mask)
        assert img.shape == (3, 48, 48) and img.dtype == torch.float32
        assert msk.shape == (48, 48) and msk.dtype == torch.int64
        red = img[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # back to [0, 1]
        valid = msk != 255
        # padding: mask 255 exactly where the image is padding (normalised 0)
        expected = torch.round((red * 255 - 20) / 60).clamp(0, 3).long()
        interior = valid & (torch.nn.functional.max_pool2d(
            (msk.float()[None]), 3, 1, 1)[0] == -torch.nn.functional.max_pool2d(
            -(msk.float()[None]), 3, 1, 1)[0])
        agree = (expected[interior] == msk[interior]).float().mean()
        assert agree > 0.97, (seed, agree)
        if (~valid).any():
            assert torch.allclose(img[:, ~valid], torch.zeros(1))


def test_flip_moves_image_and_mask_together():
    image, mask = _pattern(32, 32)
    tf = TrainTransform(crop_size=32, resize_long=(32, 32), color_jitter=(0, 0, 0, 0))
    flips = 0
    for seed in range(12):
        torch.manual_seed(seed)
        img, msk = tf(image, mask)
        flipped = torch.equal(msk, torch.from_numpy(mask[:, ::-1].astype(np.int64)))
        same = torch.equal(msk, torch.from_numpy(mask.astype(np.int64)))
        assert flipped or same
        green = img[1] * IMAGENET_STD[1] + IMAGENET_MEAN[1]
        assert (green[0, 0] > green[0, -1]) == flipped
        flips += flipped
    assert 0 < flips < 12


def test_eval_transform_is_identity_on_geometry():
    image, mask = _pattern(20, 30)
    img, msk = EvalTransform()(image, mask)
    assert img.shape == (3, 20, 30)
    assert torch.equal(msk, torch.from_numpy(mask.astype(np.int64)))


# The 8 radius-2 pairs of a 3 x 3 map: from (0, 1) and (1, 1), offsets (0, 1), (1, -1), (1, 0),
# (1, 1). How many of them touch each cell, counted by hand:
TOUCHING = [[0, 4, 1], [1, 5, 2], [1, 1, 1]]


def test_affinity_crop_padding_becomes_background_pairs() -> None:
    """TransCAM crops into a zero container, so padded label cells are background (0) and
    form background pairs; the padded image is black before normalisation."""
    image = np.full((1, 1, 3), 200, np.uint8)
    label = np.full((1, 1), 255, np.uint8)  # one ignored cell, placed at random in a 3 x 3 crop
    src, dst = pair_indices(3, 3, radius=2)
    assert src.numel() == 8
    black = (torch.zeros(3) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        img, lab = PadCropTransform(3, (0, 0, 0, 0), pad_label=0)(image, label)
        (y,), (x,) = np.nonzero(lab.numpy() == 255)
        seen.add((int(y), int(x)))
        bg, fg, neg = pair_labels(lab, src, dst)
        assert int(bg.sum()) == 8 - TOUCHING[y][x] and not fg.any() and not neg.any()
        pad = torch.ones(3, 3, dtype=torch.bool)
        pad[y, x] = False
        assert torch.allclose(img[:, pad], black[:, None].expand(3, 8), atol=1e-6)
        torch.manual_seed(seed)
        _, ignored = PadCropTransform(3, (0, 0, 0, 0), pad_label=255)(image, label)
        assert (ignored == 255).all()  # the "ignore" option: no pair at all
    assert len(seen) > 1  # the placement is random


def test_affinity_crop_of_a_larger_image_is_a_plain_crop() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    label = rng.integers(0, 3, (6, 7)).astype(np.uint8)
    torch.manual_seed(0)
    img, lab = PadCropTransform(4, (0, 0, 0, 0), flip=False)(image, label)
    assert img.shape == (3, 4, 4) and lab.shape == (4, 4)
    want = EvalTransform()(image, label)
    found = [(y, x) for y in range(3) for x in range(4)
             if torch.equal(want[1][y:y + 4, x:x + 4], lab)
             and torch.allclose(want[0][:, y:y + 4, x:x + 4], img)]
    assert found  # no rescaling: the crop is a window of the original image
