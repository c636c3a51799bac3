"""Benchmark: training data loading, ``DataLoader`` with ``num_workers`` 0 vs 2.

Inputs: a synthetic VOC-layout set written with ``bnr.data.synthetic.generate_synthetic`` into
a temporary directory (``--images`` train images of 128 x 128, JPEG + PNG), read by
``bnr.data.voc.VocSegmentation`` (split ``train``, masks on) with
``bnr.data.transforms.TrainTransform(128, (96, 160))`` (random resize, colour jitter, flip,
normalise, random crop), batches of ``--batch`` collated by the default collate, no shuffle.

Time: one full pass (epoch) over the set, worker start-up included (a new loader per pass),
best of ``--epochs`` passes; a last row keeps ``persistent_workers=True`` workers alive and
times passes after the first. Images/s = images / that time. Set generation is not timed.
With no shuffle both loaders yield the same ids and image-level labels in the same order (the
random augmentation differs: each worker has its own seed), which is checked.

Run: ``python bench/data_loader.py`` (add ``--help`` for the sizes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_set(root: Path, images: int, size: int = 128, seed: int = 2026) -> Path:
    """Write a synthetic set with ``images`` train (and no val) images; return its root."""
    from bnr.data.synthetic import SyntheticSpec, generate_synthetic

    generate_synthetic(root, SyntheticSpec(num_train=images, num_val=0, image_size=size,
                                           seed=seed))
    return root


def dataset(root: Path, crop: int = 128, resize: tuple[int, int] = (96, 160)) -> Any:
    from bnr.data.classes import SYNTHETIC_CLASSES
    from bnr.data.transforms import TrainTransform
    from bnr.data.voc import VocSegmentation

    return VocSegmentation(root, "train", SYNTHETIC_CLASSES,
                           transform=TrainTransform(crop, resize))


def epoch(ds: Any, workers: int, batch: int, loader: Any = None) -> tuple[float, list, Any]:
    """One pass (over ``loader`` if given): (seconds, ids in order, stacked labels)."""
    import torch
    from torch.utils.data import DataLoader

    t0 = time.perf_counter()
    if loader is None:
        loader = DataLoader(ds, batch_size=batch, shuffle=False, num_workers=workers)
    ids, labels = [], []
    for b in loader:
        ids.extend(b["id"])
        labels.append(b["labels"])
    return time.perf_counter() - t0, ids, torch.cat(labels)


def compare(images: int = 4, workers: tuple[int, ...] = (0, 2), batch: int = 2) -> list:
    """(ids, labels) of one pass per worker count over a tiny set (for a smoke test)."""
    with tempfile.TemporaryDirectory(prefix="bnr-bench-") as tmp:
        ds = dataset(make_set(Path(tmp) / "syn", images, size=64), crop=64, resize=(48, 80))
        return [epoch(ds, w, batch)[1:] for w in workers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="timed passes per setting")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import torch

    variants = (0, args.workers)
    with tempfile.TemporaryDirectory(prefix="bnr-bench-") as tmp:
        t0 = time.perf_counter()
        ds = dataset(make_set(Path(tmp) / "syn", args.images))
        gen_s = time.perf_counter() - t0
        epoch(ds, 0, args.batch)  # warm the page cache and torchvision
        rates, seen = {}, {}
        for w in variants:
            best = float("inf")
            for _ in range(args.epochs):
                dt, ids, labels = epoch(ds, w, args.batch)
                best = min(best, dt)
            rates[w] = len(ds) / best
            seen[w] = (ids, labels)
        from torch.utils.data import DataLoader

        persistent = DataLoader(ds, batch_size=args.batch, num_workers=args.workers,
                                persistent_workers=True)
        epoch(ds, args.workers, args.batch, persistent)  # starts the workers
        steady = min(epoch(ds, args.workers, args.batch, persistent)[0]
                     for _ in range(args.epochs))
        del persistent
    same = seen[variants[0]][0] == seen[variants[1]][0] and torch.equal(
        seen[variants[0]][1], seen[variants[1]][1]
    )
    print(
        f"DataLoader over VocSegmentation + TrainTransform(128, (96, 160)), {args.images} "
        f"synthetic 128x128 images (generated in {gen_s:.1f} s, not timed), batch {args.batch}, "
        f"no shuffle, best of {args.epochs} epochs (worker start-up included), "
        f"torch {torch.__version__}, main-process threads {torch.get_num_threads()}"
    )
    print()
    print("| num_workers | images/s |")
    print("|---|---|")
    for w in variants:
        print(f"| {w} | {rates[w]:.0f} |")
    print(f"| {args.workers}, persistent workers (start-up not timed) | {len(ds) / steady:.0f} |")
    print(f"| ratio {args.workers} / 0 | {rates[variants[1]] / rates[0]:.2f}x |")
    print(f"| ratio {args.workers} persistent / 0 | {len(ds) / steady / rates[0]:.2f}x |")
    print()
    print(f"same ids and image labels in the same order: {same}")


if __name__ == "__main__":
    main()
