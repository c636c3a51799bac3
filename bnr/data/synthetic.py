"""The embedded synthetic WSSS dataset, written in the exact PASCAL VOC 2012 layout.

It reproduces the problem the paper attacks at laptop scale: every foreground class has a
distinct shape and texture, and a *context* texture (as boats come with water and trains with
rails) that is drawn around it most of the time (``context_prob``) and seldom without it
(``stray_context_prob`` per absent class). Context is labelled background, so a classifier that
learns "waves mean disc" activates its CAM and attention on the background.

Images are cluttered (smooth random colour field, noise, small random strokes), hold 1 to
``max_objects`` objects of distinct classes (``class_count_probs``), of radius
``object_radius`` (px at 128 px, up to ``truncation`` of it outside the image): by default VOC
2012's proportions (foreground about a quarter of the labelled pixels, objects from 3 % of the
image to two thirds, 1.5 classes per image). They are deterministic from ``seed``: the same seed
gives byte-identical files (each image draws from its own ``numpy`` generator seeded from
``(seed, split, index)``).

Layout written under ``root``::

    JPEGImages/<id>.jpg                      RGB, JPEG quality 90
    SegmentationClass/<id>.png               palette PNG, 0 background, 1..6 classes, 255 boundary
    ImageSets/Segmentation/{train,val}.txt   one id per line
    cls_labels.json                          {id: [class indices present, 1-based]}
    synthetic_info.json                      generator settings and per-image context flags
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from bnr.data.classes import SYNTHETIC_CLASSES
from bnr.data.drawing import cluttered_background, mix, rotate
from bnr.io import atomic_path, label_png_bytes

# the context texture of each class of SYNTHETIC_CLASSES (index 0: background)
CONTEXTS = (None, "waves", "rails", "bricks", "grass", "dots", "checker")
IGNORE = 255

Texture = Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SyntheticSpec:
    """Generator settings (the ``download.synthetic`` params block)."""

    num_train: int = 1000
    num_val: int = 200
    image_size: int = 128
    max_objects: int = 3
    class_count_probs: tuple[float, ...] = (0.6, 0.3, 0.1)  # P(1, 2, ... classes), normalised
    object_radius: tuple[float, float] = (14.0, 60.0)  # object radius range, px at 128 px
    truncation: float = 0.3  # up to this fraction of an object's radius may leave the image
    context_prob: float = 0.85
    stray_context_prob: float = 0.08
    clutter: int = 12
    seed: int = 2026


# ---------------------------------------------------------------------------------------------
# textures: (rng, yy, xx) -> (H, W, 3) float in [0, 1]


def _waves(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    phase = rng.uniform(0, 2 * np.pi)
    t = 0.5 + 0.5 * np.sin(yy / 2.2 + 2.0 * np.sin(xx / 7.0 + phase))
    return mix(np.array([0.05, 0.25, 0.55]), np.array([0.35, 0.65, 0.95]), t)


def _rails(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    ry, rx = rotate(yy, xx, rng.uniform(-0.3, 0.3))
    ties = (np.mod(rx + rng.uniform(0, 9), 9) < 3).astype(float)
    rail = (np.mod(ry, 14) < 2.5).astype(float)
    base = np.array([0.45, 0.40, 0.35]) + 0.08 * rng.standard_normal(yy.shape + (3,)) * 0.5
    out = mix(base, np.array([0.35, 0.2, 0.08]), ties * 0.9)
    return mix(out, np.array([0.8, 0.8, 0.85]), rail)


def _bricks(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    row = np.floor(yy / 6.0)
    shift = np.where(np.mod(row, 2) == 0, 0.0, 6.0)
    mortar = (np.mod(yy, 6) < 1.2) | (np.mod(xx + shift, 12) < 1.2)
    return mix(np.array([0.65, 0.22, 0.12]), np.array([0.85, 0.82, 0.75]), mortar.astype(float))


def _grass(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    h, w = yy.shape
    streaks = rng.random((1, w)) * 0.6 + 0.4 * rng.random((h, w))
    streaks = ndimage.uniform_filter1d(streaks, 5, axis=0)
    return mix(np.array([0.1, 0.35, 0.05]), np.array([0.45, 0.8, 0.2]), streaks)


def _dots(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    oy, ox = rng.uniform(0, 8, 2)
    d = np.hypot(np.mod(yy + oy, 8) - 4, np.mod(xx + ox, 8) - 4)
    return mix(np.array([0.95, 0.9, 0.55]), np.array([0.55, 0.1, 0.55]), (d < 2.2).astype(float))


def _checker(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    ry, rx = rotate(yy, xx, rng.uniform(0, np.pi / 2))
    t = (np.mod(np.floor(ry / 5) + np.floor(rx / 5), 2)).astype(float)
    return mix(np.array([0.1, 0.1, 0.1]), np.array([0.9, 0.9, 0.9]), t)


CONTEXT_TEXTURES: dict[str, Texture] = {
    "waves": _waves,
    "rails": _rails,
    "bricks": _bricks,
    "grass": _grass,
    "dots": _dots,
    "checker": _checker,
}

# foreground look of each class: base colour, stripe colour, stripe period (px)
OBJECT_LOOK = {
    1: ((0.95, 0.55, 0.05), (0.75, 0.30, 0.00), 4.0),
    2: ((0.85, 0.10, 0.60), (1.00, 0.60, 0.85), 3.0),
    3: ((0.10, 0.75, 0.75), (0.00, 0.40, 0.45), 5.0),
    4: ((0.95, 0.95, 0.20), (0.55, 0.55, 0.00), 3.5),
    5: ((0.40, 0.20, 0.85), (0.75, 0.65, 1.00), 2.5),
    6: ((0.95, 0.25, 0.25), (0.40, 0.05, 0.05), 4.5),
}


def _object_texture(cls: int, rng: np.random.Generator, yy, xx) -> np.ndarray:
    base, stripe, period = OBJECT_LOOK[cls]
    ry, _ = rotate(yy, xx, rng.uniform(0, np.pi))
    t = (np.mod(ry, period) < period / 2).astype(float)
    out = mix(np.array(base), np.array(stripe), t)
    return out * rng.uniform(0.8, 1.1)


# ---------------------------------------------------------------------------------------------
# shapes: boolean masks from centred, rotated coordinates and radius r


def _shape_mask(cls: int, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    ay, ax = np.abs(dy), np.abs(dx)
    if cls == 1:  # disc
        return dy**2 + dx**2 <= r**2
    if cls == 2:  # square
        return (ay <= 0.8 * r) & (ax <= 0.8 * r)
    if cls == 3:  # triangle, apex up
        return (dy <= 0.7 * r) & (dy >= -r + 1.9 * ax)
    if cls == 4:  # cross
        arm = 0.32 * r
        return ((ay <= arm) & (ax <= r)) | ((ax <= arm) & (ay <= r))
    if cls == 5:  # ring
        d = np.hypot(dy, dx)
        return (d <= r) & (d >= 0.55 * r)
    if cls == 6:  # five-pointed star
        theta = np.arctan2(dy, dx)
        rad = r * (0.55 + 0.45 * np.cos(5 * theta) ** 2) ** 1.5
        return np.hypot(dy, dx) <= rad
    raise ValueError(f"unknown synthetic class {cls}")


def render_image(
    spec: SyntheticSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw one image.

    Returns ``image`` (H, W, 3) uint8, ``label`` (H, W) uint8 with 0 background, class indices
    and 255 on object boundaries, and ``info`` (classes drawn, context drawn per class).
    """
    size = spec.image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    img = cluttered_background(rng, size, spec.clutter)
    label = np.zeros((size, size), np.uint8)
    n_fg = len(SYNTHETIC_CLASSES) - 1
    probs = np.asarray(spec.class_count_probs[: spec.max_objects], float)
    count = 1 + int(rng.choice(len(probs), p=probs / probs.sum()))
    classes = sorted(rng.choice(np.arange(1, n_fg + 1), size=count, replace=False).tolist())
    scale = size / 128.0
    objects = []
    for cls in classes:
        r = rng.uniform(*spec.object_radius) * scale
        inner = min(r * (1 - spec.truncation), size / 2)  # centre's margin from the border
        for _ in range(20):  # keep objects mostly apart so each stays visible
            cy, cx = rng.uniform(inner, size - inner, 2)
            if all(np.hypot(cy - oy, cx - ox) > 0.8 * (r + orr) for oy, ox, orr, _ in objects):
                break
        objects.append((cy, cx, r, cls))
    info = {"classes": classes, "context": {}, "stray_context": []}
    # context of present classes (most of the time) and of absent ones (seldom): background
    for cy, cx, r, cls in objects:
        if rng.random() < spec.context_prob:
            info["context"][cls] = True
            ry, rx = r * rng.uniform(1.8, 2.6), r * rng.uniform(1.8, 2.6)
            ey, ex = cy + rng.uniform(-0.3, 0.3) * r, cx + rng.uniform(-0.3, 0.3) * r
            region = ((yy - ey) / ry) ** 2 + ((xx - ex) / rx) ** 2 <= 1
            tex = CONTEXT_TEXTURES[CONTEXTS[cls]](rng, yy, xx)
            img[region] = tex[region]
        else:
            info["context"][cls] = False
    for cls in range(1, n_fg + 1):
        if cls not in classes and rng.random() < spec.stray_context_prob:
            info["stray_context"].append(cls)
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(18, 32, 2) * scale
            region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            tex = CONTEXT_TEXTURES[CONTEXTS[cls]](rng, yy, xx)
            img[region] = tex[region]
    for cy, cx, r, cls in objects:
        dy, dx = rotate(yy - cy, xx - cx, rng.uniform(0, 2 * np.pi) if cls != 3 else 0.0)
        mask = _shape_mask(cls, dy, dx, r)
        tex = _object_texture(cls, rng, yy, xx)
        img[mask] = tex[mask]
        label[mask] = cls
    img = np.clip(img + 0.03 * rng.standard_normal(img.shape), 0, 1)
    # VOC marks object outlines with 255: a band where the 3x3 neighbourhood changes label
    edge = ndimage.maximum_filter(label, 3) != ndimage.minimum_filter(label, 3)
    label = np.where(edge, IGNORE, label).astype(np.uint8)
    present = sorted(int(c) for c in np.unique(label) if c not in (0, IGNORE))
    info["classes"] = present
    return (img * 255 + 0.5).astype(np.uint8), label, info


def _encode(image: np.ndarray, label: np.ndarray) -> tuple[bytes, bytes]:
    jpg = io.BytesIO()
    Image.fromarray(image).save(jpg, format="JPEG", quality=90)
    return jpg.getvalue(), label_png_bytes(label)


def generate_synthetic(root: str | Path, spec: SyntheticSpec) -> dict:
    """Write the whole dataset to ``root`` atomically; return summary statistics.

    The statistics (image counts, per-class image frequency, context co-occurrence rates) are
    what ``metrics/dataset.json`` records.
    """
    root = Path(root)
    n_fg = len(SYNTHETIC_CLASSES) - 1
    with atomic_path(root) as tmp:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
        labels: dict[str, list[int]] = {}
        per_image: dict[str, dict] = {}
        areas: dict[str, dict] = {"train": {}, "val": {}}
        for split, count in (("train", spec.num_train), ("val", spec.num_val)):
            ids = []
            for i in range(count):
                rng = np.random.default_rng([spec.seed, 0 if split == "train" else 1, i])
                image, label, info = render_image(spec, rng)
                img_id = f"syn_{split}_{i:06d}"
                jpg, png = _encode(image, label)
                (tmp / "JPEGImages" / f"{img_id}.jpg").write_bytes(jpg)
                (tmp / "SegmentationClass" / f"{img_id}.png").write_bytes(png)
                labels[img_id] = info["classes"]
                areas[split][img_id] = label_areas(label)
                per_image[img_id] = {
                    "split": split,
                    "context": {str(k): v for k, v in info["context"].items()},
                    "stray_context": info["stray_context"],
                }
                ids.append(img_id)
            (tmp / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        (tmp / "cls_labels.json").write_text(json.dumps(labels, indent=0, sort_keys=True))
        info_doc = {"spec": asdict(spec), "classes": SYNTHETIC_CLASSES, "contexts": CONTEXTS,
                    "images": per_image}
        (tmp / "synthetic_info.json").write_text(json.dumps(info_doc, sort_keys=True))
    stats = synthetic_statistics(labels, per_image, n_fg)
    for split, split_areas in areas.items():
        stats[split]["pixels"] = area_statistics(split_areas.values())
    return stats


def label_areas(label: np.ndarray) -> dict:
    """Foreground fraction of the labelled pixels (255 excluded) of one label map (H, W) and the
    fraction each present class covers."""
    labelled = max(int((label != IGNORE).sum()), 1)
    classes = [int(c) for c in np.unique(label) if c not in (0, IGNORE)]
    return {"foreground": float(((label != 0) & (label != IGNORE)).sum() / labelled),
            "objects": [float((label == c).sum() / labelled) for c in classes]}


def _percentiles(values: list[float]) -> dict:
    v = np.asarray(values, float) if values else np.zeros(1)
    return {"mean": round(float(v.mean()), 4), "p10": round(float(np.percentile(v, 10)), 4),
            "median": round(float(np.median(v)), 4),
            "p90": round(float(np.percentile(v, 90)), 4), "max": round(float(v.max()), 4)}


def area_statistics(per_image: Iterable[dict]) -> dict:
    """Foreground fraction per image and area per object (a class in an image; a fraction of
    the labelled pixels): mean, p10, median, p90, max over a split (``label_areas`` items)."""
    items = list(per_image)
    return {"foreground_fraction": _percentiles([a["foreground"] for a in items]),
            "object_area_fraction": _percentiles([o for a in items for o in a["objects"]])}


def synthetic_statistics(labels: dict, per_image: dict, n_fg: int) -> dict:
    """Counts, per-class image frequencies and context co-occurrence rates per split."""
    stats: dict = {}
    for split in ("train", "val"):
        ids = [i for i, v in per_image.items() if v["split"] == split]
        per_class = {}
        for cls in range(1, n_fg + 1):
            with_cls = [i for i in ids if cls in labels[i]]
            without = [i for i in ids if cls not in labels[i]]
            ctx_with = sum(bool(per_image[i]["context"].get(str(cls))) for i in with_cls)
            ctx_without = sum(cls in per_image[i]["stray_context"] for i in without)
            per_class[SYNTHETIC_CLASSES[cls]] = {
                "images": len(with_cls),
                "image_frequency": len(with_cls) / max(len(ids), 1),
                "context": CONTEXTS[cls],
                "context_rate_with_class": ctx_with / max(len(with_cls), 1),
                "context_rate_without_class": ctx_without / max(len(without), 1),
            }
        n_objects = [len(labels[i]) for i in ids]
        stats[split] = {
            "images": len(ids),
            "mean_classes_per_image": float(np.mean(n_objects)) if ids else 0.0,
            "multi_label_fraction": float(np.mean([n > 1 for n in n_objects])) if ids else 0.0,
            "classes": per_class,
        }
    return stats
