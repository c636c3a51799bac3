"""A generated classification world: the synthetic demo's own "ImageNet" (pretrain stage).

Its classes are disjoint from the demo (``bnr.data.synthetic``): ten shapes that are none of the
demo's six (disc, square, triangle, cross, ring, star; no world shape reaches a mask IoU of 0.75
with any of them at any rotation, ``tests/test_pretrain.py``), times five colour families, = 50
classes named ``<shape>-<colour>``. Each object's surface is one of five patterns (solid,
gradient, concentric, pinwheel, speckle; none of them a demo context texture (waves, rails,
bricks, grass, dots, checker) or the demo's stripes), drawn at random: a nuisance, like the
colours' jitter. (Classes defined by shape x pattern with random colours stayed at chance for
this small model within the CPU budget; with colour families it learns.) Backgrounds reuse the
demo's generic cluttered colour field (``drawing.cluttered_background``), half of the time with a
large patch of smooth "marble" noise.

An image holds 1 to ``max_objects`` objects of distinct classes; its target is multi-hot over
the 50 classes. Image ``i`` of split ``s`` draws from its own ``numpy`` generator seeded with
``(seed, s, i)``, so the same seed gives byte-identical images, and the train split is
effectively unbounded (index any integer): training never repeats an image unless asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from bnr.data.drawing import cluttered_background, mix, rotate
from bnr.data.transforms import normalize

SHAPES = ("ellipse", "chevron", "kite", "crescent", "horseshoe", "arrow", "ell", "tee",
          "semicircle", "bowtie")
PATTERNS = ("solid", "gradient", "target", "pinwheel", "speckle")
PALETTES = {"red": (0.95, 0.15, 0.15), "green": (0.15, 0.85, 0.2), "blue": (0.2, 0.35, 0.95),
            "yellow": (0.95, 0.85, 0.1), "violet": (0.9, 0.3, 0.9)}
PRETRAIN_CLASSES = tuple(f"{s}-{c}" for s in SHAPES for c in PALETTES)
SPLIT_STREAMS = {"train": 0, "val": 1}
COUNT_PROBS = (0.4, 0.35, 0.25)  # P(1, 2, 3 objects) before clipping to max_objects


@dataclass(frozen=True)
class WorldSpec:
    """Generator settings (part of the ``pretrain`` params block)."""

    image_size: int = 64
    max_objects: int = 2
    clutter: int = 10
    seed: int = 4242


def shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of ``shape`` of radius ``r`` in centred, rotated coordinates (H, W)."""
    ay, ax = np.abs(dy), np.abs(dx)
    if shape == "ellipse":
        return (dy / (0.5 * r)) ** 2 + (dx / r) ** 2 <= 1
    if shape == "chevron":
        return (ax <= r) & (dy >= 0.6 * ax - 0.55 * r) & (dy <= 0.6 * ax - 0.05 * r)
    if shape == "kite":
        return ay / r + ax / (0.45 * r) <= 1
    if shape == "crescent":
        return (np.hypot(dy, dx) <= r) & (np.hypot(dy, dx - 0.5 * r) > 0.8 * r)
    if shape == "horseshoe":
        d = np.hypot(dy, dx)
        return ((d <= r) & (d >= 0.5 * r) & (dy <= 0)) | ((dy > 0) & (dy <= r) & (ax >= 0.5 * r)
                                                         & (ax <= r))
    if shape == "arrow":
        shaft = (ay <= 0.22 * r) & (dx >= -r) & (dx <= 0.15 * r)
        head = (dx > 0.15 * r) & (dx <= r) & (ay <= 0.75 * (r - dx) / 0.85)
        return shaft | head
    if shape == "ell":
        return ((dx >= -r) & (dx <= -0.35 * r) & (ay <= r)) | ((dy >= 0.35 * r) & (dy <= r)
                                                              & (ax <= r))
    if shape == "tee":
        return ((dy >= -r) & (dy <= -0.45 * r) & (ax <= r)) | ((ax <= 0.28 * r) & (ay <= r))
    if shape == "semicircle":
        return (np.hypot(dy - 0.4 * r, dx) <= r) & (dy <= 0.4 * r)
    if shape == "bowtie":
        return (ay <= 0.9 * ax + 0.08 * r) & (ax <= r)
    raise ValueError(f"unknown pretrain shape {shape!r}")


Pattern = Callable[[np.random.Generator, np.ndarray, np.ndarray, float], np.ndarray]


def _solid(rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    return np.zeros_like(dy)


def _gradient(rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    ry, _ = rotate(dy, dx, rng.uniform(0, 2 * np.pi))
    return np.clip(0.5 + ry / (2 * r), 0, 1)


def _target(rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    period = max(3.0, r / rng.uniform(2.5, 3.5))
    return (np.mod(np.hypot(dy, dx), period) < period / 2).astype(float)


def _pinwheel(rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    theta = np.arctan2(dy, dx) + rng.uniform(0, np.pi)
    return (np.mod(theta, np.pi / 3) < np.pi / 6).astype(float)


def _speckle(rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    noise = ndimage.uniform_filter(rng.random(dy.shape), 3)
    return (noise > 0.5).astype(float)


PATTERN_FNS: dict[str, Pattern] = {"solid": _solid, "gradient": _gradient, "target": _target,
                                   "pinwheel": _pinwheel, "speckle": _speckle}


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours at least 0.45 apart (so patterns stay visible)."""
    first = rng.uniform(0, 1, 3)
    for _ in range(20):
        second = rng.uniform(0, 1, 3)
        if np.linalg.norm(first - second) > 0.45:
            break
    return first, second


def _marble(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random noise in two random colours, (H, W, 3)."""
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 24)
    t = 0.5 + 0.5 * np.sin(noise * rng.uniform(20, 40))
    a, b = _colour_pair(rng)
    return mix(a, b, t)


def render_world_image(spec: WorldSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """One image (H, W, 3) uint8 and its sorted class indices (0-based into PRETRAIN_CLASSES)."""
    size = spec.image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    img = cluttered_background(rng, size, spec.clutter)
    if rng.random() < 0.5:
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(0.2, 0.5, 2) * size
        region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        img[region] = _marble(rng, size)[region]
    probs = np.array(COUNT_PROBS[: spec.max_objects])
    count = int(rng.choice(np.arange(1, spec.max_objects + 1), p=probs / probs.sum()))
    classes = sorted(rng.choice(len(PRETRAIN_CLASSES), size=count, replace=False).tolist())
    placed: list[tuple[float, float, float]] = []
    masks = []
    for cls in classes:
        r = rng.uniform(0.15, 0.3) * size  # 64 px: 10-19 px, the demo's objects' size
        for _ in range(20):  # keep objects mostly apart so each stays visible
            cy, cx = rng.uniform(r, size - r, 2)
            if all(np.hypot(cy - oy, cx - ox) > 0.9 * (r + orr) for oy, ox, orr in placed):
                break
        placed.append((cy, cx, r))
        shape, colour = PRETRAIN_CLASSES[cls].split("-")
        dy, dx = rotate(yy - cy, xx - cx, rng.uniform(0, 2 * np.pi))
        mask = shape_mask(shape, dy, dx, r)
        base = np.array(PALETTES[colour])
        light = np.clip(base + rng.uniform(-0.12, 0.12, 3), 0, 1)
        dark = base * rng.uniform(0.3, 0.6)
        pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
        tex = mix(light, dark, PATTERN_FNS[pattern](rng, dy, dx, r))
        img[mask] = tex[mask]
        masks.append(mask)
    # an object more than half hidden by the ones drawn after it is not labelled
    covered = np.zeros((size, size), bool)
    drawn = []
    for cls, mask in zip(classes[::-1], masks[::-1], strict=True):
        if (mask & ~covered).sum() >= 0.5 * mask.sum():
            drawn.append(cls)
        covered |= mask
    img = np.clip(img + 0.03 * rng.standard_normal(img.shape), 0, 1)
    return (img * 255 + 0.5).astype(np.uint8), sorted(drawn)


def world_rng(spec: WorldSpec, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split`` (``train`` or ``val``)."""
    return np.random.default_rng([spec.seed, SPLIT_STREAMS[split], index])


class PretrainWorld(Dataset):
    """Images ``offset .. offset + length - 1`` of ``split`` as normalised tensors.

    Item: ``{"image": (3, S, S) float32, "labels": (K,) float32 multi-hot}``, K = 50. Train items
    are flipped at random (torch's generator, seeded per sample by ``SeededItems``).
    """

    def __init__(self, spec: WorldSpec, split: str, length: int, offset: int = 0,
                 flip: bool = False) -> None:
        self.spec, self.split, self.length, self.offset, self.flip = (
            spec, split, length, offset, flip)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        image, classes = render_world_image(self.spec, world_rng(self.spec, self.split,
                                                                 self.offset + index))
        img = normalize(torch.from_numpy(image).permute(2, 0, 1))
        if self.flip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        labels = torch.zeros(len(PRETRAIN_CLASSES))
        labels[classes] = 1.0
        return {"image": img, "labels": labels}
