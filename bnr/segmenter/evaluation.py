"""The evaluate stage's work: the segmenter (trained by :mod:`bnr.segmenter.segmenter_training`) on
the validation split, and the evaluation-server archive of the test split.

* :func:`evaluate_split`: confusion matrix of ``val_split`` against ``gt_dir`` with the test-time
  inference of :mod:`bnr.segmenter.test_time` (TransCAM's test_deeplab.py: logits averaged
  over scales and flips, align_corners, bicubic rescaling, probability CRF; ``evaluate`` block),
  prediction PNGs in the VOC palette.
* :func:`write_server_archive`: PASCAL VOC evaluation-server tar
  (``results/VOC2012/Segmentation/comp6_test_cls/<id>.png``).
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from torch import nn
from tqdm import tqdm

from bnr.data.voc import read_mask, read_split
from bnr.io import atomic_path, label_png_bytes, read_image, write_label_png
from bnr.metrics import confusion_matrix
from bnr.runtime import CPU, Runtime
from bnr.segmenter.test_time import (  # noqa: F401 - multiscale_predict re-exported
    multiscale_predict,
    predict_labels,
)

SERVER_DIR = "results/VOC2012/Segmentation/comp6_test_cls"  # PASCAL VOC server layout


def evaluate_split(
    model: nn.Module,
    pred_dir: Path | None,
    ids: Sequence[str],
    *,
    root: Path,
    gt_dir: str,
    n_labels: int,
    options: dict,
    progress: bool = True,
    runtime: Runtime = CPU,
) -> tuple[np.ndarray, dict]:
    """Accumulated (S, S) confusion (``n_labels`` classes) of the images ``ids`` of dataset
    ``root`` against ``gt_dir``, predicted with ``options`` (the keyword arguments of
    :func:`predict_labels`: scales, flip, CRF; the evaluate step resolves them).

    Predictions are written to ``pred_dir`` (atomic directory of VOC palette PNGs; None = not
    written). The network runs on ``runtime`` (``model`` already prepared
    for it). Returns ``(confusion, stats)``.
    """
    root, n = Path(root), n_labels
    ids = list(ids)
    conf = np.zeros((n, n), np.int64)
    model.eval()
    started = time.time()

    def run(out: Path | None) -> None:
        nonlocal conf
        for img_id in tqdm(ids, desc="evaluate", disable=not progress):
            image = read_image(root / "JPEGImages" / f"{img_id}.jpg")
            gt = read_mask(root / gt_dir / f"{img_id}.png", n, image.shape[:2])
            label = predict_labels(model, image, **options, runtime=runtime)
            conf += confusion_matrix(label, gt, n)
            if out is not None:
                write_label_png(out / f"{img_id}.png", label)

    if pred_dir is None:
        run(None)
    else:
        with atomic_path(pred_dir) as tmp:
            tmp.mkdir()
            run(tmp)
    return conf, {"images": len(ids), "seconds": round(time.time() - started, 1)}


def write_label_tar(out: Path, labels: Iterable[tuple[str, np.ndarray]],
                    folder: str = SERVER_DIR) -> int:
    """Write ``(id, (H, W) labels)`` pairs as ``<folder>/<id>.png`` palette PNGs into the tar
    ``out`` (atomically; none given = an empty archive). Returns the number of files."""
    count = 0
    with atomic_path(out) as tmp, tarfile.open(tmp, "w") as tar:
        for img_id, label in labels:
            blob = label_png_bytes(label)
            info = tarfile.TarInfo(f"{folder}/{img_id}.png")
            info.size, info.mtime, info.mode = len(blob), 0, 0o644
            tar.addfile(info, io.BytesIO(blob))
            count += 1
    return count


def write_server_archive(
    model: nn.Module,
    out: Path,
    *,
    dataset: str,
    root: Path,
    test_split: str,
    options: dict,
    progress: bool = True,
    runtime: Runtime = CPU,
) -> dict:
    """PASCAL VOC evaluation-server archive of ``test_split`` predictions (voc2012 only).

    Layout: ``results/VOC2012/Segmentation/comp6_test_cls/<id>.png`` (comp6: trained with
    data other than VOC segmentation labels). Same scales / flip / CRF as the evaluation. When
    not configured (another dataset, or ``test_split`` empty) an empty tar is written so the
    stage output always exists. ``options``: :func:`predict_labels`' keyword arguments. The
    network runs on ``runtime``. Returns ``{"images": n, "archive": path, "note": ...}``.
    """
    if dataset != "voc2012" or not test_split:
        write_label_tar(out, [])
        why = ("test_split is empty" if not test_split
               else f"the server layout is VOC2012's, dataset is {dataset}")
        return {"images": 0, "archive": str(out), "note": f"no server predictions ({why})"}
    root = Path(root)
    ids = read_split(root, test_split)
    model.eval()

    def labels() -> Iterator[tuple[str, np.ndarray]]:
        for img_id in tqdm(ids, desc=f"predict {test_split}", disable=not progress):
            image = read_image(root / "JPEGImages" / f"{img_id}.jpg")
            yield img_id, predict_labels(model, image, **options, runtime=runtime)

    n = write_label_tar(out, labels())
    return {"images": n, "archive": str(out), "note": f"{SERVER_DIR}/<id>.png for {n} images"}
