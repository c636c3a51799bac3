import numpy as np
import torch

from bnr.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform


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
