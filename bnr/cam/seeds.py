"""Seed CAMs of a split (infer_seeds) and their evaluation (eval_seeds, paper Table 5, Fig. 4).

CAM files: ``<cam_dir>/<id>.npz`` with ``classes`` (K,) int (1-based) and ``cams`` (K, H, W)
float16 in [0, 1] at the image's original size, only for the image's classes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bnr.cam.maps import multiscale_cam
from bnr.data.voc import VocSegmentation, read_mask
from bnr.errors import BnrError
from bnr.io import atomic_path
from bnr.runtime import CPU, Runtime


def item_seed_cams(
    model: nn.Module,
    item: dict,
    scales: Sequence[int],
    *,
    resample: str,
    runtime: Runtime = CPU,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """The seed CAMs of one dataset ``item`` (its uint8 ``image``, its ``labels``) as
    :func:`infer_split_cams` stores them: ``classes`` (K,) int64 (1-based, the image's classes)
    and ``cams`` (K, H, W) float16, from :func:`bnr.cam.maps.multiscale_cam` with ``resample``
    (required: the pipeline's is ``infer_seeds.resample``) and its other keyword ``options``
    (``flip``, ``resize``, ``batch_passes``, ``patch_multiple``, ``source``)."""
    image = np.asarray(item["image"])  # (H, W, 3) uint8
    classes = [int(c) for c in torch.nonzero(item["labels"][1:]).flatten() + 1]
    cams = multiscale_cam(model, image, classes, scales, resample=resample, runtime=runtime,
                          **options)  # (K, H, W) CPU float32
    return np.asarray(classes, np.int64), cams.numpy().astype(np.float16)


def infer_split_cams(
    model: nn.Module,
    dataset: VocSegmentation,
    out_dir: Path,
    scales: Sequence[int],
    *,
    resample: str,
    progress: bool = True,
    runtime: Runtime = CPU,
    **options: Any,
) -> int:
    """Write the seed CAMs of every image of ``dataset`` into ``out_dir`` (atomically),
    :func:`item_seed_cams` of each. ``resample``: how each pass resizes the image
    (:func:`bnr.cam.maps.scaled_input`; TransCAM: PIL bicubic on the uint8 image, then
    normalisation); ``options``: the other keyword arguments of
    :func:`bnr.cam.maps.multiscale_cam`.

    The network runs on ``runtime`` (``model`` already prepared for it); the saved CAMs are
    computed in float32 after the network and stored as float16 whatever the precision.
    """
    model.eval()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for index in tqdm(range(len(dataset)), desc="infer_seeds", disable=not progress):
            item = dataset[index]
            classes, cams = item_seed_cams(model, item, scales, resample=resample,
                                           runtime=runtime, **options)
            np.savez(tmp / f"{item['id']}.npz", classes=classes, cams=cams)
    return len(dataset)


def load_cams(cam_dir: Path, img_id: str, image_hw: tuple[int, int] | None = None):
    """(classes (K,), cams (K, H, W) float32) of one image; a clear error if absent or wrong."""
    path = Path(cam_dir) / f"{img_id}.npz"
    if not path.is_file():
        raise BnrError(f"{path}: CAM file missing for image {img_id} listed in the split")
    try:
        with np.load(path) as npz:
            classes, cams = npz["classes"], npz["cams"].astype(np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise BnrError(f"{path}: unreadable CAM file ({exc})") from None
    if cams.ndim != 3 or cams.shape[0] != len(classes):
        raise BnrError(f"{path}: CAM array {cams.shape} does not match {len(classes)} classes")
    if image_hw is not None and cams.shape[1:] != tuple(image_hw):
        raise BnrError(
            f"{path}: CAM size {cams.shape[2]}x{cams.shape[1]} differs from its ground truth "
            f"{image_hw[1]}x{image_hw[0]}"
        )
    return classes, cams


def threshold_confusions(
    cams: np.ndarray, classes: np.ndarray, gt: np.ndarray, thresholds: np.ndarray, num_classes: int
) -> np.ndarray:
    """Confusion matrices of the seeds at every threshold at once: (T, C, C).

    A pixel is labelled ``classes[argmax]`` for every threshold <= its peak score, else
    background; so one histogram over (first threshold above the peak, gt, label) and a
    cumulative sum give all T matrices (equal to calling ``cams_to_seeds`` T times).
    """
    t = len(thresholds)
    valid = gt != 255
    gt_v = gt[valid].astype(np.int64)
    if cams.shape[0] == 0:
        label = np.zeros_like(gt_v)
        cut = np.zeros_like(gt_v)
    else:
        peak = cams.max(0)[valid]
        label = np.asarray(classes, np.int64)[cams.argmax(0)[valid]]
        cut = np.searchsorted(thresholds, peak, side="right")  # thresholds[:cut] <= peak
    # hist[b, g, l]: pixels with cut == b, ground truth g, argmax label l
    hist = np.bincount((cut * num_classes + gt_v) * num_classes + label,
                       minlength=(t + 1) * num_classes * num_classes)
    hist = hist.reshape(t + 1, num_classes, num_classes)
    # at threshold index i, pixels with cut > i keep their label, the others are background
    keep = np.cumsum(hist[::-1], axis=0)[::-1][1:]  # keep[i] = sum_{b > i} hist[b]
    to_bg = np.cumsum(hist, axis=0)[:t].sum(axis=2)  # (T, C): pixels with cut <= i, per gt
    conf = keep.copy()
    conf[:, :, 0] += to_bg
    return conf


def seed_miou_sweep(
    cam_dir: Path,
    dataset_root: Path,
    ids: Sequence[str],
    gt_dir: str,
    num_classes: int,
    thresholds: np.ndarray,
    progress: bool = True,
) -> np.ndarray:
    """Accumulated (T, C, C) confusion matrices of the seeds of ``ids`` against ``gt_dir``."""
    total = np.zeros((len(thresholds), num_classes, num_classes), np.int64)
    for img_id in tqdm(ids, desc="eval_seeds", disable=not progress):
        gt = read_mask(Path(dataset_root) / gt_dir / f"{img_id}.png", num_classes)
        classes, cams = load_cams(cam_dir, img_id, gt.shape)
        total += threshold_confusions(cams, classes, gt, thresholds, num_classes)
    return total


def threshold_grid(start: float, stop: float, step: float) -> np.ndarray:
    """Thresholds start..stop inclusive (rounded to the step's decimals)."""
    count = int(np.floor((stop - start) / step + 1e-9)) + 1
    return np.round(start + step * np.arange(count), 6)


def checked_cams(cam_dir: Path, img_id: str, image_hw: tuple[int, int]):
    """(classes, cams) of ``img_id``; a clear error if the CAM size differs from its image."""
    classes, cams = load_cams(cam_dir, img_id)
    if cams.shape[1:] != tuple(image_hw):
        raise BnrError(
            f"{Path(cam_dir) / (img_id + '.npz')}: seed CAM size {cams.shape[2]}x{cams.shape[1]} "
            f"differs from its image {image_hw[1]}x{image_hw[0]} (re-run infer_seeds)"
        )
    return classes, cams


def best_seed_threshold(path: Path) -> float:
    """The best background threshold eval_seeds chose (its threshold file)."""
    path = Path(path)
    if not path.is_file():
        raise BnrError(f"{path}: not found (run the eval_seeds stage)")
    try:
        value = json.loads(path.read_text())["best_threshold"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BnrError(f"{path}: no best_threshold ({exc})") from None
    return float(value)
