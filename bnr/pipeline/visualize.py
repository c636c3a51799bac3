"""Colour overlays of CAMs, attention and labels (paper Fig. 1 and 5); numpy + PIL only."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bnr.io import voc_palette


def jet(values: np.ndarray) -> np.ndarray:
    """Map (H, W) values in [0, 1] to (H, W, 3) uint8 with a jet-like colour map."""
    v = np.clip(values, 0, 1)[..., None]
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.concatenate([r, g, b], -1) * 255).astype(np.uint8)


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend an (H, W) heat map in [0, 1] over an (H, W, 3) uint8 image."""
    return (image * (1 - alpha) + jet(heat) * alpha).astype(np.uint8)


def colorize_labels(label: np.ndarray) -> np.ndarray:
    """(H, W) label indices -> (H, W, 3) uint8 in the VOC palette."""
    palette = np.asarray(voc_palette(), np.uint8).reshape(256, 3)
    return palette[label]


@torch.no_grad()
def class_token_attention(model: nn.Module, image: torch.Tensor, size: int) -> np.ndarray:
    """Class-token-to-patch attention (block and head mean), upsampled to the image: (H, W).

    ``image`` is normalised (3, H, W); it is resized to ``size`` x ``size`` for the pass.
    """
    h, w = image.shape[-2:]
    x = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)
    out = model(x)
    grid = out["cam"].shape[-2:]
    attn = out["attn_sum"][0, 0, 1:].reshape(1, 1, *grid)  # (N,) -> (1, 1, h', w')
    attn = F.interpolate(attn, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    attn = attn - attn.min()
    return (attn / (attn.max() + 1e-8)).numpy()


def panel(tiles: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Tiles (H, W, 3) side by side with a white gap."""
    h = tiles[0].shape[0]
    sep = np.full((h, gap, 3), 255, np.uint8)
    out = []
    for i, t in enumerate(tiles):
        out += [t] if i == 0 else [sep, t]
    return np.concatenate(out, axis=1)
