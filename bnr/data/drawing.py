"""Drawing helpers shared by the generated worlds (the demo, ``bnr.data.synthetic``, and the
pretrain world, ``bnr.data.pretrain_world``).

They live apart from both generators so that editing the demo's generator leaves the pretrain
stage's import closure, and so its cache, untouched.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def rotate(yy: np.ndarray, xx: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (H, W) rotated by ``angle`` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return c * yy - s * xx, s * yy + c * xx


def mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Colour ``a`` (3,) blended into ``b`` (3,) by the weights ``t`` (H, W) -> (H, W, 3)."""
    return a * (1 - t[..., None]) + b * t[..., None]


def cluttered_background(rng: np.random.Generator, size: int, clutter: int) -> np.ndarray:
    """Smooth random colour field + fine noise + small random strokes, (H, W, 3) in [0, 1]."""
    coarse = rng.uniform(0.15, 0.85, (4, 4, 3))
    field = ndimage.zoom(coarse, (size / 4, size / 4, 1), order=1)[:size, :size]
    img = field + 0.05 * rng.standard_normal((size, size, 3))
    for _ in range(clutter):
        y, x = rng.integers(0, size, 2)
        h, w = rng.integers(1, 7, 2)
        img[y : y + h, x : x + w] = rng.uniform(0, 1, 3)
    return img
