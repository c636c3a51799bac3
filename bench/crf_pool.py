"""Benchmark: ``bnr.pseudo_labels.crf.crf_map`` with ``dense_crf_labels``, 1 vs 2 workers.

Inputs: ``--images`` synthetic ``--size`` x ``--size`` images drawn with
``bnr.data.synthetic.render_image``; the labels given to the CRF are each image's ground truth
with the 255 boundary band set to background and about 20 % of pixels replaced by a random
class of the 7 (noisy seeds). ``dense_crf_labels`` with TransCAM's settings, ``n_labels`` 7.

Variants, all in input order: ``workers=0`` (in this process), ``workers=1`` (a one-process
pool), ``workers=2`` (a two-process pool); the pools use the default start method (fork on
Linux) and their start-up is included in the time. Time: best of ``--repeats`` full runs.
The outputs of all variants are checked to be identical.

Run: ``python bench/crf_pool.py`` (add ``--help`` for the sizes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_LABELS = 7


def crf_one(payload: tuple[Any, Any]) -> Any:
    """Module-level (picklable) CRF call: (image, labels) -> refined labels."""
    from bnr.pseudo_labels.crf import dense_crf_labels

    image, labels = payload
    return dense_crf_labels(image, labels, n_labels=N_LABELS)


def inputs(n: int, size: int, seed: int = 0) -> list[tuple[str, tuple[Any, Any]]]:
    """``n`` (id, (image, noisy labels)) items from the synthetic renderer."""
    import numpy as np

    from bnr.data.synthetic import IGNORE, SyntheticSpec, render_image

    spec = SyntheticSpec(image_size=size)
    items = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        image, label, _ = render_image(spec, rng)
        label = np.where(label == IGNORE, 0, label).astype(np.uint8)
        noise = rng.random(label.shape) < 0.2
        label[noise] = rng.integers(0, N_LABELS, int(noise.sum()))
        items.append((f"img{i:03d}", (image, label)))
    return items


def run(items: list, workers: int) -> list[tuple[str, Any]]:
    """All CRF results, in input order."""
    from bnr.pseudo_labels.crf import crf_map

    return list(crf_map(crf_one, items, workers=workers))


def compare(n: int = 3, size: int = 32, workers: tuple[int, ...] = (0, 2)) -> list[list]:
    """Results of each worker count on ``n`` tiny images (for a smoke test)."""
    items = inputs(n, size)
    return [run(items, w) for w in workers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np

    from bnr.threads import available_cores

    items = inputs(args.images, args.size, args.seed)
    variants = (0, 1, 2)
    times, outs = {}, {}
    for w in variants:
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            outs[w] = run(items, w)
            best = min(best, time.perf_counter() - t0)
        times[w] = best
    ref = outs[0]
    same = all(
        [i for i, _ in outs[w]] == [i for i, _ in ref]
        and all(np.array_equal(a, b) for (_, a), (_, b) in zip(outs[w], ref, strict=True))
        for w in variants
    )
    changed = np.mean([(out != lab).mean() for (_, out), (_, (_, lab)) in zip(ref, items,
                                                                              strict=True)])
    print(
        f"dense CRF (labels, TransCAM settings, {N_LABELS} labels, 10 iterations) on "
        f"{args.images} synthetic {args.size}x{args.size} images, {available_cores()} cores "
        f"available, best of {args.repeats} runs (pool start-up included)"
    )
    print()
    print("| workers | total (s) | images/s |")
    print("|---|---|---|")
    names = {0: "0 (in-process)", 1: "1 (pool)", 2: "2 (pool)"}
    for w in variants:
        print(f"| {names[w]} | {times[w]:.3f} | {args.images / times[w]:.1f} |")
    print(f"| speed-up 2 workers vs in-process | {times[0] / times[2]:.2f}x | |")
    print(f"| speed-up 2 workers vs 1 worker | {times[1] / times[2]:.2f}x | |")
    print()
    print(f"results identical across worker counts (and in input order): {same}")
    print(f"(the CRF changed {100 * changed:.1f} % of the noisy seed pixels)")


if __name__ == "__main__":
    main()
