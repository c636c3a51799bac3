"""Joint image/mask transforms (torchvision.transforms.v2), keeping image and mask aligned.

Training: random resize of the long side, colour jitter (image only), horizontal flip,
ImageNet normalisation, random crop with padding (image 0 = mean colour after normalisation,
mask 255 = ignore). AffinityNet training (:class:`PadCropTransform`, TransCAM / PSA
``train_aff.py``): colour jitter, random crop of the uint8 image into a zero container (black
padding, label padding ``pad_label``), flip, then normalisation; no rescaling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensors(
    image: np.ndarray, mask: np.ndarray | None
) -> tuple[tv_tensors.Image, tv_tensors.Mask | None]:
    """(H, W, 3) uint8 + (H, W) uint8 -> tv_tensors (3, H, W) uint8 + (H, W) int64."""
    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    msk = None if mask is None else tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64)))
    return img, msk


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> ImageNet-normalised float32."""
    return F.normalize(F.to_dtype(image, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)


class RandomResizeLong:
    """Resize so the long side is a random integer in [lo, hi] (aspect kept)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = int(lo), int(hi)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor | None):
        long = int(torch.randint(self.lo, self.hi + 1, ()).item())
        h, w = image.shape[-2:]
        size = [max(1, round(h * long / max(h, w))), max(1, round(w * long / max(h, w)))]
        image = F.resize(image, size, antialias=True)  # bilinear for images
        if mask is not None:
            mask = F.resize(mask, size)  # tv_tensors.Mask -> nearest
        return image, mask


class TrainTransform:
    """Paper training augmentation; returns (3, crop, crop) float32 and (crop, crop) int64."""

    def __init__(
        self,
        crop_size: int,
        resize_long: Sequence[int],
        color_jitter: Sequence[float] = (0.3, 0.3, 0.3, 0.1),
        flip: bool = True,
    ) -> None:
        self.resize = RandomResizeLong(*resize_long)
        steps: list = []
        if any(color_jitter):
            steps.append(v2.ColorJitter(*color_jitter))
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        self.pre = v2.Compose(steps) if steps else None
        self.crop = v2.RandomCrop(
            crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}
        )

    def __call__(self, image: np.ndarray, mask: np.ndarray | None):
        img, msk = to_tensors(image, mask)
        img, msk = self.resize(img, msk)
        if self.pre is not None:
            img, msk = self.pre(img, msk) if msk is not None else (self.pre(img), None)
        img = tv_tensors.Image(normalize(img))
        img, msk = self.crop(img, msk) if msk is not None else (self.crop(img), None)
        return img.as_subclass(torch.Tensor), None if msk is None else msk.as_subclass(torch.Tensor)


class EvalTransform:
    """No augmentation: normalised (3, H, W) float32 image, mask as int64 (H, W)."""

    def __call__(self, image: np.ndarray, mask: np.ndarray | None):
        img, msk = to_tensors(image, mask)
        return normalize(img).as_subclass(torch.Tensor), (
            None if msk is None else msk.as_subclass(torch.Tensor)
        )


def random_pad_crop(
    image: torch.Tensor, mask: torch.Tensor, crop: int, pad_label: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """TransCAM / PSA ``imutils.RandomCrop``: (3, H, W) uint8 + (H, W) -> (3, crop, crop) +
    (crop, crop). A side longer than ``crop`` is cut at a random offset; a shorter one is placed
    at a random offset in a container of 0 (image: black) and ``pad_label`` (mask)."""
    h, w = image.shape[-2:]
    box = []
    for n in (h, w):
        offset = int(torch.randint(0, abs(n - crop) + 1, ()).item())
        box.append((0, offset) if n > crop else (offset, 0))  # (container, source) starts
    (ct, it), (cl, il) = box
    ch, cw = min(crop, h), min(crop, w)
    img = image.new_zeros((image.shape[0], crop, crop))
    img[:, ct:ct + ch, cl:cl + cw] = image[:, it:it + ch, il:il + cw]
    msk = mask.new_full((crop, crop), pad_label)
    msk[ct:ct + ch, cl:cl + cw] = mask[it:it + ch, il:il + cw]
    return img, msk


class PadCropTransform:
    """AffinityNet training augmentation of TransCAM / PSA ``train_aff.py``: colour jitter,
    :func:`random_pad_crop` (``pad_label`` 0: padded cells become background pairs, as
    TransCAM's zero container; 255: ignored), horizontal flip, ImageNet normalisation.
    Returns (3, crop, crop) float32 and (crop, crop) int64."""

    def __init__(self, crop_size: int, color_jitter: Sequence[float] = (0.3, 0.3, 0.3, 0.1),
                 pad_label: int = 0, flip: bool = True) -> None:
        self.crop, self.pad_label, self.flip = int(crop_size), int(pad_label), flip
        self.jitter = v2.ColorJitter(*color_jitter) if any(color_jitter) else None

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img, msk = to_tensors(image, mask)
        img, msk = img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor)
        if self.jitter is not None:
            img = self.jitter(img)  # uint8 (3, H, W)
        img, msk = random_pad_crop(img, msk, self.crop, self.pad_label)
        if self.flip and torch.rand(()) < 0.5:
            img, msk = img.flip(-1), msk.flip(-1)
        return normalize(img), msk
