"""The single source of every mIoU in the project (knows no model)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bnr.io import write_text


def confusion_matrix(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """(C, C) int64 confusion matrix, rows = ground truth, columns = prediction.

    ``pred`` and ``gt`` are integer arrays of any equal shape; pixels whose ground truth is
    ``ignore_index`` (or outside [0, C)) are skipped. A prediction outside [0, C) is an error.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    gt = gt.reshape(-1).astype(np.int64)
    pred = pred.reshape(-1).astype(np.int64)
    keep = (gt != ignore_index) & (gt >= 0) & (gt < num_classes)
    gt, pred = gt[keep], pred[keep]
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"prediction holds a class outside [0, {num_classes})")
    return np.bincount(gt * num_classes + pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """(C,) IoU per class; NaN for a class absent from both ground truth and prediction."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def mean_iou(conf: np.ndarray) -> float:
    """Mean IoU over the classes that are not NaN, as a fraction in [0, 1]."""
    iou = iou_per_class(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def sweep_mious(confs: np.ndarray) -> tuple[np.ndarray, int]:
    """(mIoU per threshold in [0, 1], index of the best) of the (T, C, C) confusion matrices of
    a threshold sweep (eval_seeds' scoring: :func:`mean_iou` of each, the first best on ties)."""
    mious = np.array([mean_iou(c) for c in confs])
    return mious, int(np.nanargmax(mious))


def per_class_table(conf: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """A per-class table: IoU (%), ground-truth and predicted pixel counts, then a mIoU row."""
    iou = iou_per_class(conf)
    table = pd.DataFrame(
        {
            "class": list(class_names),
            "iou": np.round(iou * 100, 2),
            "gt_pixels": np.asarray(conf).sum(1),
            "pred_pixels": np.asarray(conf).sum(0),
        }
    )
    summary = pd.DataFrame(
        {"class": ["mIoU"], "iou": [round(mean_iou(conf) * 100, 2)],
         "gt_pixels": [int(np.asarray(conf).sum())], "pred_pixels": [int(np.asarray(conf).sum())]}
    )
    return pd.concat([table, summary], ignore_index=True)


def write_class_table(table: pd.DataFrame, path_stem: str | Path) -> None:
    """Write ``<stem>.csv`` and ``<stem>.md`` beside a metrics JSON (atomically)."""
    path_stem = Path(path_stem)
    write_text(path_stem.with_suffix(".csv"), table.to_csv(index=False))
    write_text(path_stem.with_suffix(".md"), table.to_markdown(index=False) + "\n")
