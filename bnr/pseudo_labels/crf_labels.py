"""The crf stage's work: dense CRF of the random-walk labels (a process pool), and the mIoU of
the seeds (best eval_seeds threshold), the random-walk and the CRF labels."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bnr.cam.maps import cams_to_seeds
from bnr.cam.seeds import best_seed_threshold, checked_cams
from bnr.data.classes import class_names
from bnr.data.voc import read_mask, read_split
from bnr.errors import BnrError
from bnr.io import atomic_path, read_image, read_label_png, write_label_png
from bnr.metrics import confusion_matrix, iou_per_class, mean_iou
from bnr.pseudo_labels.crf import crf_map, dense_crf_labels
from bnr.pseudo_labels.crf_settings import CrfSettings


def _crf_one(payload: tuple) -> np.ndarray:
    """Worker: label dense CRF of one image's random-walk labels."""
    image_path, label_path, n_labels, kw = payload
    image = read_image(image_path)
    labels = read_label_png(label_path)
    if labels.shape != image.shape[:2]:
        raise BnrError(f"{label_path}: label size {labels.shape} differs from its image")
    if not (labels != 0).any():  # nothing but background: the CRF cannot change it
        return labels
    return dense_crf_labels(image, labels, n_labels, **kw)


def crf_split(
    ids: Sequence[str],
    label_dir: Path,
    out_dir: Path,
    *,
    root: Path,
    n_labels: int,
    crf: CrfSettings,
    progress: bool = True,
    fn: Callable[[tuple], np.ndarray] = _crf_one,
) -> dict:
    """Dense-CRF the labels of ``label_dir`` into ``out_dir`` (atomic dir), the images of
    dataset ``root`` with ``n_labels`` classes, with the ``crf`` settings and workers.

    A failing or dying worker raises a BnrError naming the image; ``out_dir`` is then left as
    it was (no partial directory). ``fn`` is the per-image worker (tests inject failures).
    """
    root = Path(root)
    kw = crf.kwargs
    for img_id in ids:  # fail before starting the pool
        if not (Path(label_dir) / f"{img_id}.png").is_file():
            raise BnrError(f"{Path(label_dir) / img_id}.png: random-walk label missing "
                           "(run the random_walk stage)")
    items = ((i, (root / "JPEGImages" / f"{i}.jpg", Path(label_dir) / f"{i}.png", n_labels, kw))
             for i in ids)
    started, no_fg = time.time(), 0
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for img_id, label in tqdm(crf_map(fn, items, crf.workers), total=len(ids),
                                  desc="crf", disable=not progress):
            no_fg += int(not (label != 0).any())
            write_label_png(tmp / f"{img_id}.png", label)
    return {"images": len(ids), "all_background": no_fg,
            "seconds": round(time.time() - started, 1)}


def _iter_eval(ids: Sequence[str], progress: bool) -> Iterator[str]:
    yield from tqdm(ids, desc="eval pseudo labels", disable=not progress)


def pseudo_label_confusions(
    ids: Sequence[str],
    threshold: float,
    rw_dir: Path,
    crf_dir: Path,
    cam_dir: Path,
    *,
    gt_dir: Path,
    n_labels: int,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Accumulated (C, C) confusion matrices of seeds / random walk / CRF on ``ids`` against
    the masks of ``gt_dir`` (``n_labels`` classes)."""
    n = n_labels
    conf = {k: np.zeros((n, n), np.int64) for k in ("seeds", "random_walk", "crf")}
    for img_id in _iter_eval(ids, progress):
        gt = read_mask(Path(gt_dir) / f"{img_id}.png", n)
        classes, cams = checked_cams(cam_dir, img_id, gt.shape)
        preds = {"seeds": cams_to_seeds(cams, classes, threshold)}
        for name, folder in (("random_walk", rw_dir), ("crf", crf_dir)):
            path = Path(folder) / f"{img_id}.png"
            if not path.is_file():
                raise BnrError(f"{path}: label missing for evaluated image {img_id}")
            preds[name] = read_mask(path, n, gt.shape)
        for name, pred in preds.items():
            conf[name] += confusion_matrix(pred, gt, n)
    return conf


def evaluate_pseudo_labels(
    rw_dir: Path,
    crf_dir: Path,
    cam_dir: Path,
    seeds_json: Path,
    *,
    dataset: str,
    root: Path,
    gt_dir: str,
    eval_split: str,
    infer_split: str,
    progress: bool = True,
) -> tuple[dict, Any]:
    """mIoU of the seeds (best eval_seeds threshold), random-walk and CRF labels on
    ``eval_split`` (seed_eval_split, inside ``infer_split``) of ``dataset`` at ``root``
    against ``gt_dir``. Returns ``(metrics without protocol, table)``; the table has
    per-class IoU (%) columns ``seeds``, ``random_walk``, ``crf``."""
    import pandas as pd

    names = class_names(dataset)
    ids = read_split(root, eval_split)
    infer = set(read_split(root, infer_split))
    outside = [i for i in ids if i not in infer]
    if outside:
        raise BnrError(f"seed_eval_split {eval_split!r} has {len(outside)} images "
                       f"outside infer_split {infer_split!r} (e.g. {outside[0]})")
    threshold = best_seed_threshold(seeds_json)
    conf = pseudo_label_confusions(ids, threshold, rw_dir, crf_dir, cam_dir,
                                   gt_dir=Path(root) / gt_dir, n_labels=len(names),
                                   progress=progress)
    out: dict[str, Any] = {"images": len(ids), "seed_threshold": threshold}
    table = pd.DataFrame({"class": [*names, "mIoU"]})
    for key, c in conf.items():
        iou = iou_per_class(c)
        out[f"miou_{key}"] = round(mean_iou(c) * 100, 3)
        table[key] = [*np.round(iou * 100, 2), round(mean_iou(c) * 100, 2)]
    total = conf["crf"]
    table["gt_pixels"] = [*total.sum(1), int(total.sum())]
    table["crf_pred_pixels"] = [*total.sum(0), int(total.sum())]
    return out, table
