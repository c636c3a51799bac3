"""Benchmark: ``bnr.metrics.confusion_matrix`` (one bincount) vs a per-class loop reference.

Inputs: ``--maps`` random label maps of ``--height`` x ``--width`` with ``--classes`` classes;
ground truth uniform in [0, C) with about 5 % of pixels set to the ignore value 255,
predictions equal to the ground truth on about 70 % of pixels and uniform elsewhere. Both
methods accumulate one matrix over all maps (as evaluation does); the matrices are checked to be
identical. Time: best of ``--repeats`` full passes over the maps, in this process (no memory
measurement: both are small).

The reference loops over ground-truth classes c and counts ``np.bincount(pred[gt == c])``,
i.e. one boolean mask and one bincount per class and map.

Run: ``python bench/confusion.py`` (add ``--help`` for the sizes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IGNORE = 255


def confusion_loop(pred: Any, gt: Any, num_classes: int, ignore_index: int = IGNORE) -> Any:
    """Reference: (C, C) int64, rows = ground truth, one masked bincount per class."""
    import numpy as np

    pred = np.asarray(pred).reshape(-1)
    gt = np.asarray(gt).reshape(-1)
    conf = np.zeros((num_classes, num_classes), np.int64)
    for c in range(num_classes):
        if c == ignore_index:
            continue
        conf[c] = np.bincount(pred[gt == c], minlength=num_classes)[:num_classes]
    return conf


def label_maps(n: int, h: int, w: int, classes: int, seed: int = 0) -> list[tuple[Any, Any]]:
    """``n`` (pred, gt) pairs of (h, w) uint8 maps (see the module docstring)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        gt = rng.integers(0, classes, (h, w), dtype=np.uint8)
        gt[rng.random((h, w)) < 0.05] = IGNORE
        pred = np.where(
            (rng.random((h, w)) < 0.7) & (gt != IGNORE),
            gt,
            rng.integers(0, classes, (h, w), dtype=np.uint8),
        ).astype(np.uint8)
        pairs.append((pred, gt))
    return pairs


def accumulate(pairs: list[tuple[Any, Any]], classes: int, method: str) -> Any:
    """Sum of the per-map matrices by ``bincount`` (bnr.metrics) or ``loop`` (reference)."""
    from bnr.metrics import confusion_matrix

    fn = confusion_matrix if method == "bincount" else confusion_loop
    total = None
    for pred, gt in pairs:
        conf = fn(pred, gt, classes)
        total = conf if total is None else total + conf
    return total


def compare(n: int = 3, h: int = 50, w: int = 40, classes: int = 21) -> tuple[Any, Any]:
    """Both matrices over ``n`` random maps (for a smoke test)."""
    pairs = label_maps(n, h, w, classes)
    return accumulate(pairs, classes, "bincount"), accumulate(pairs, classes, "loop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=200)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np

    pairs = label_maps(args.maps, args.height, args.width, args.classes, args.seed)
    times, mats = {}, {}
    for method in ("loop", "bincount"):
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            mats[method] = accumulate(pairs, args.classes, method)
            best = min(best, time.perf_counter() - t0)
        times[method] = best
    same = np.array_equal(mats["loop"], mats["bincount"])
    print(
        f"confusion matrix, {args.maps} random {args.width}x{args.height} label maps, "
        f"{args.classes} classes (~5 % ignore), numpy {np.__version__}, best of {args.repeats}"
    )
    print()
    print("| method | total (s) | per map (ms) |")
    print("|---|---|---|")
    print(f"| per-class loop (reference) | {times['loop']:.3f} | "
          f"{1000 * times['loop'] / args.maps:.2f} |")
    print(f"| bnr.metrics.confusion_matrix (bincount) | {times['bincount']:.3f} | "
          f"{1000 * times['bincount'] / args.maps:.2f} |")
    print(f"| ratio loop / bincount | {times['loop'] / times['bincount']:.1f}x | |")
    print()
    print(f"matrices identical: {same} (total count {int(mats['bincount'].sum())})")


if __name__ == "__main__":
    main()
