"""Colour overlays of CAMs, attention and labels (paper Fig. 1 and 5), with panel titles and a
class colour legend; numpy + PIL only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
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


SEED_TITLES = ("image", "ground truth", "M* (seed CAM)", "seeds", "attention")
SEGMENTATION_TITLES = ("image", "ground truth", "prediction")
TITLE_HEIGHT, SWATCH, LINE = 16, 10, 14


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> float:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _legend_items(classes: Sequence[str], heat: bool) -> list[tuple[str, Any]]:
    palette = np.asarray(voc_palette(), np.uint8).reshape(256, 3)
    items: list[tuple[str, Any]] = [(name, tuple(int(c) for c in palette[i]))
                                    for i, name in enumerate(classes)]
    items.append(("ignore", tuple(int(c) for c in palette[255])))  # object borders in VOC masks
    if heat:
        items.append(("heat: low to high", None))  # a jet ramp instead of a swatch
    return items


def _layout(draw: ImageDraw.ImageDraw, items: list[tuple[str, Any]], width: int,
            font: ImageFont.ImageFont) -> list[tuple[int, int, str, Any]]:
    """(x, line, text, colour) of each legend item, wrapped to ``width``."""
    out, x, line = [], 4, 0
    for text, colour in items:
        w = (3 * SWATCH if colour is None else SWATCH) + 4 + int(_text_width(draw, text, font)) + 10
        if x + w > width and x > 4:
            x, line = 4, line + 1
        out.append((x, line, text, colour))
        x += w
    return out


def titled_panel(tiles: list[np.ndarray], titles: Sequence[str], classes: Sequence[str],
                 heat: bool = False, gap: int = 2) -> np.ndarray:
    """:func:`panel` with a title above each tile and a colour legend of ``classes`` (in the
    label palette) below, plus a heat ramp when ``heat``; text in Pillow's built-in font, so no
    system font is needed."""
    if len(titles) != len(tiles):
        raise ValueError(f"{len(tiles)} tiles but {len(titles)} titles")
    body = Image.fromarray(panel(tiles, gap))
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items = _layout(probe, _legend_items(classes, heat), body.width, font)
    lines = 1 + max((line for _, line, _, _ in items), default=0)
    canvas = Image.new("RGB", (body.width, TITLE_HEIGHT + body.height + 4 + lines * LINE),
                       "white")
    canvas.paste(body, (0, TITLE_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for tile, title in zip(tiles, titles, strict=True):
        draw.text((x + tile.shape[1] / 2, TITLE_HEIGHT / 2), title, fill=(0, 0, 0), font=font,
                  anchor="mm")
        x += tile.shape[1] + gap
    top = TITLE_HEIGHT + body.height + 4
    for x, line, text, colour in items:
        y = top + line * LINE + 2
        if colour is None:
            ramp = jet(np.linspace(0, 1, 3 * SWATCH)[None].repeat(SWATCH, 0))
            canvas.paste(Image.fromarray(ramp), (x, y))
            x += 2 * SWATCH
        else:
            draw.rectangle([x, y, x + SWATCH - 1, y + SWATCH - 1], fill=colour,
                           outline=(128, 128, 128))
        draw.text((x + SWATCH + 4, y + SWATCH / 2), text, fill=(0, 0, 0), font=font,
                  anchor="lm")
    return np.asarray(canvas)
