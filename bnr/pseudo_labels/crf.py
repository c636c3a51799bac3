"""Dense CRF (pydensecrf) in TransCAM's label form and PSA's probability form, plus a process
pool that runs it over many images and names the image when a worker fails or dies.

* :func:`dense_crf_labels`: TransCAM ``crf_inference_label``: ``unary_from_labels`` with
  ``gt_prob=0.7``, ``zero_unsure=False``; Gaussian sxy 3 compat 3; bilateral sxy 50 srgb 5
  compat 10; 10 mean-field iterations; returns the arg-max labels.
* :func:`dense_crf_probs`: PSA ``crf_inference``: ``unary_from_softmax`` (-log of the scores
  clipped at 1e-5); Gaussian sxy 3 compat 3; bilateral sxy 80 srgb 13 compat 10; returns the
  (C, H, W) marginals.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import tempfile
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bnr.errors import BnrError
from bnr.threads import available_cores

T = TypeVar("T")
R = TypeVar("R")


def _check_image(image: np.ndarray, hw: tuple[int, ...]) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BnrError(f"CRF image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if image.shape[:2] != tuple(hw):
        raise BnrError(f"CRF image {image.shape[:2]} and scores {tuple(hw)} differ in size")
    if not (image.flags.c_contiguous and image.flags.writeable):  # pydensecrf needs both
        image = np.array(image, order="C")
    return image


def dense_crf_labels(
    image: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
    gt_prob: float = 0.7,
    gauss_sxy: float = 3,
    gauss_compat: float = 3,
    bilateral_sxy: float = 50,
    bilateral_srgb: float = 5,
    bilateral_compat: float = 10,
    iterations: int = 10,
) -> np.ndarray:
    """Refine a label map: image (H, W, 3) uint8, labels (H, W) ints in [0, n_labels) -> (H, W)
    uint8 labels (TransCAM's settings by default)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise BnrError(f"CRF labels must be (H, W), got {labels.shape}")
    image = _check_image(image, labels.shape)
    if not 2 <= n_labels <= 255:
        raise BnrError(f"CRF n_labels must be in 2..255, got {n_labels}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise BnrError(
            f"CRF labels must lie in [0, {n_labels}), got {labels.min()}..{labels.max()}"
        )
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    h, w = labels.shape
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    unary = unary_from_labels(labels.astype(np.int64), n_labels, gt_prob=gt_prob, zero_unsure=False)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))  # (n_labels, H * W)
    crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    crf.addPairwiseBilateral(
        sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=image, compat=bilateral_compat
    )
    q = np.asarray(crf.inference(iterations)).reshape(n_labels, h, w)  # (n_labels, H, W)
    return np.argmax(q, axis=0).astype(np.uint8)  # (H, W)


def dense_crf_probs(
    image: np.ndarray,
    probs: np.ndarray,
    gauss_sxy: float = 3,
    gauss_compat: float = 3,
    bilateral_sxy: float = 80,
    bilateral_srgb: float = 13,
    bilateral_compat: float = 10,
    iterations: int = 10,
) -> np.ndarray:
    """Refine class scores: image (H, W, 3) uint8, probs (C, H, W) >= 0 -> (C, H, W) float32
    marginals (PSA's settings by default; the scores need not sum to one)."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise BnrError(f"CRF probs must be (C, H, W) with C >= 2, got {probs.shape}")
    image = _check_image(image, probs.shape[1:])
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))  # (C, H * W)
    crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    crf.addPairwiseBilateral(
        sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=image, compat=bilateral_compat
    )
    return np.asarray(crf.inference(iterations), dtype=np.float32).reshape(c, h, w)


# --------------------------------------------------------------------------------------------
# Process pool
# --------------------------------------------------------------------------------------------

_TRACK_DIR: Path | None = None
_CURRENT: Path | None = None


def _on_sigterm(signum: int, frame: Any) -> None:
    # The pool terminates the surviving workers after one dies: they remove their marker so
    # that only the crashed worker's image id is left in the tracking directory.
    if _CURRENT is not None:
        with contextlib.suppress(OSError):
            _CURRENT.unlink()
    os._exit(128 + signum)


def _init_worker(track_dir: str) -> None:
    global _TRACK_DIR
    _TRACK_DIR = Path(track_dir)
    signal.signal(signal.SIGTERM, _on_sigterm)


def _run_one(fn: Callable[[T], R], image_id: str, payload: T) -> tuple[str, Any]:
    global _CURRENT
    marker = None
    if _TRACK_DIR is not None:
        marker = _TRACK_DIR / f"{os.getpid()}"
        marker.write_text(image_id)
        _CURRENT = marker
    try:
        return "ok", fn(payload)
    except BnrError as exc:
        return "error", str(exc)
    except Exception as exc:  # reported with the image id by the parent
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return (
            "error",
            f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})",
        )
    finally:
        _CURRENT = None
        if marker is not None:
            with contextlib.suppress(OSError):
                marker.unlink()


def crf_map(
    fn: Callable[[T], R],
    items: Iterable[tuple[str, T]],
    workers: int | None = None,
    start_method: str | None = None,
) -> Iterator[tuple[str, R]]:
    """Run ``fn(payload)`` for each ``(image_id, payload)`` in a process pool, in input order.

    Yields ``(image_id, result)``. ``workers`` defaults to the available cores; 0 runs in this
    process. ``fn`` and the payloads must be picklable (a module-level function). At most
    ``2 * workers`` items are in flight, so ``items`` may be a lazy generator. An exception in
    ``fn`` raises a one-line :class:`BnrError` starting with the image id; a worker process that
    dies (segfault, ``os._exit``, OOM kill) raises a BnrError naming the image it was working on.
    ``start_method``: multiprocessing start method (default: the platform's, "fork" on Linux
    with Python 3.11); use "spawn" if ``fn`` runs torch ops after the parent used OpenMP.
    """
    n = available_cores() if workers is None else int(workers)
    if n <= 0:
        for image_id, payload in items:
            status, value = _run_one(fn, image_id, payload)
            if status == "error":
                raise BnrError(f"{image_id}: {value}")
            yield image_id, value
        return
    with tempfile.TemporaryDirectory(prefix="bnr-crf-") as track_dir:
        pool = ProcessPoolExecutor(
            n,
            mp_context=multiprocessing.get_context(start_method),
            initializer=_init_worker,
            initargs=(track_dir,),
        )
        pending: deque[tuple[str, Future[tuple[str, Any]]]] = deque()
        source = iter(items)
        crashed = False
        try:

            def submit_next() -> None:
                for image_id, payload in source:
                    pending.append((image_id, pool.submit(_run_one, fn, image_id, payload)))
                    return

            for _ in range(2 * n):
                submit_next()
            while pending:
                image_id, future = pending.popleft()
                try:
                    status, value = future.result()
                    submit_next()  # keep the workers busy while the caller uses this result
                except BrokenProcessPool:
                    crashed = True
                    in_flight = [image_id, *(i for i, _ in pending)]
                    pool.shutdown(wait=True, cancel_futures=True)
                    # a file another worker had just opened may still be empty: not a culprit
                    culprits = sorted(t for p in Path(track_dir).iterdir() if (t := p.read_text()))
                    if culprits:
                        raise BnrError(
                            f"{', '.join(culprits)}: CRF worker process died (crash or kill) "
                            "while processing this image"
                        ) from None
                    raise BnrError(
                        f"{image_id}: a CRF worker process died while one of these images was "
                        f"in flight: {', '.join(in_flight[: 2 * n])}"
                    ) from None
                if status == "error":
                    raise BnrError(f"{image_id}: {value}")
                yield image_id, value
        finally:
            if not crashed:
                pool.shutdown(wait=True, cancel_futures=True)
