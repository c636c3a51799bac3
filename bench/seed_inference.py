"""Benchmark: Conformer seed inference, stacked per-block attention vs the accumulated sum.

Part 1 (memory/time of one forward, conformer_s, 21 classes, random init, eval, no_grad, one
``--size`` x ``--size`` image):

* stacking (baseline, as the public TransCAM code does): ``model(x, keep_attn_blocks=True)``,
  ``torch.stack`` of every block's (B, heads, 1+N, 1+N) attention, head-mean, block-sum;
* ours: the ``attn_sum`` (B, 1+N, 1+N) the model accumulates block by block.

Both then give the refined CAM M* = A* . M (``bnr.cam.maps.refine_cam``); the two M* are compared.
Each variant runs in its own fresh process (multiprocessing "spawn"). Memory: the growth of the
process's peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) during the first
forward (+ refinement), over the peak reached after importing torch, building the model and the
input. Time: wall clock of that first call and the best of ``--repeats`` further calls.

Part 2 (throughput of ``bnr.cam.maps.multiscale_cam``, conformer_tiny, scales 64/128/192, flip,
patch_multiple 8): the flipped pass in the same batch of 2 as the plain one
(``batch_passes=True``) vs one pass at a time (``batch_passes=False``), images/s, in this
process; the seed maps of both are compared.

Run: ``python bench/seed_inference.py`` (add ``--help`` for the sizes).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("stacking", "accumulated")


def build(preset: str, classes: int = 21, seed: int = 0) -> Any:
    """A randomly initialised Conformer preset in eval mode."""
    import torch

    from bnr.models.conformer import create_conformer

    torch.manual_seed(seed)
    return create_conformer(preset, classes).eval()


def image(size: int, seed: int = 0, batch: int = 1) -> Any:
    """A normalised-looking random input (batch, 3, size, size)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g)


def refined_cam(model: Any, x: Any, variant: str) -> Any:
    """M* (B, S, h, w) of ``x`` by the ``stacking`` or ``accumulated`` formulation."""
    import torch

    from bnr.cam.maps import refine_cam

    with torch.no_grad():
        if variant == "stacking":  # public TransCAM: keep every block, stack, reduce
            out = model(x, keep_attn_blocks=True)
            stacked = torch.stack(out["attn_blocks"])  # (L, B, heads, 1+N, 1+N)
            attn = stacked.mean(dim=2).sum(dim=0)  # -> (B, 1+N, 1+N)
        elif variant == "accumulated":
            out = model(x)
            attn = out["attn_sum"]  # (B, 1+N, 1+N), summed block by block in the model
        else:
            raise ValueError(f"unknown variant {variant!r}")
        return refine_cam(out["cam"], attn[:, 1:, 1:])


def compare(preset: str = "conformer_tiny", size: int = 64, classes: int = 21) -> float:
    """Max |M*_stacking - M*_accumulated| on one random image, in this process."""
    model = build(preset, classes)
    x = image(size)
    a = refined_cam(model, x, "stacking")
    b = refined_cam(model, x, "accumulated")
    return float((a - b).abs().max())


def seed_maps(model: Any, images: list, batch_passes: bool, scales: tuple[int, ...]) -> list:
    """``multiscale_cam`` of each (3, H, W) image, all foreground classes (1..S-1)."""
    from bnr.cam.maps import multiscale_cam

    classes = list(range(1, model.num_classes))
    return [
        multiscale_cam(
            model, img, classes, scales, flip=True, batch_passes=batch_passes, patch_multiple=8,
            resample="bilinear",  # the images are normalised floats (random)
        )
        for img in images
    ]


def _worker(variant: str, args: argparse.Namespace, out: Any) -> None:
    import torch

    torch.set_num_threads(args.threads)
    model = build(args.preset, args.classes, args.seed)
    x = image(args.size, args.seed)
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    result = refined_cam(model, x, variant)
    first = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    repeats = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        refined_cam(model, x, variant)
        repeats.append(time.perf_counter() - t0)
    out.send(
        {
            "first_s": first,
            "best_s": min(repeats) if repeats else first,
            "peak_mib": (peak_kib - base_kib) / 1024,
            "base_mib": base_kib / 1024,
            "result": result.numpy(),
        }
    )
    out.close()


def _run(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker, args=(variant, args, send))
    proc.start()
    send.close()
    res = recv.recv()
    proc.join()
    return res


def _throughput(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    model = build("conformer_tiny", args.classes, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    images = [torch.randn(3, 160, 200, generator=g) for _ in range(args.ms_images)]
    scales = (64, 128, 192)
    seed_maps(model, images[:1], True, scales)  # warm-up
    seed_maps(model, images[:1], False, scales)
    rates, maps = {}, {}
    for batched in (False, True):
        best = float("inf")
        for _ in range(args.ms_rounds):
            t0 = time.perf_counter()
            maps[batched] = seed_maps(model, images, batched, scales)
            best = min(best, time.perf_counter() - t0)
        rates[batched] = len(images) / best
    diff = max(float((a - b).abs().max()) for a, b in zip(maps[False], maps[True], strict=True))
    print(
        f"multiscale_cam, conformer_tiny, {len(images)} random 160x200 images, scales "
        f"{'/'.join(map(str, scales))} + flips (6 passes/image), patch_multiple 8, "
        f"{args.threads} thread(s), best of {args.ms_rounds} rounds"
    )
    print()
    print("| passes | images/s |")
    print("|---|---|")
    print(f"| one at a time (batch_passes=False) | {rates[False]:.1f} |")
    print(f"| plain + flip in one batch of 2 (batch_passes=True) | {rates[True]:.1f} |")
    print(f"| ratio batched / one at a time | {rates[True] / rates[False]:.2f}x |")
    print()
    print(f"seed maps, batched vs one at a time: max |diff| {diff:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768, help="image side (multiple of 16)")
    parser.add_argument("--preset", default="conformer_s")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="extra timed forwards")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--ms-images", type=int, default=16, help="images for multiscale_cam")
    parser.add_argument("--ms-rounds", type=int, default=3, help="timed multiscale rounds")
    parser.add_argument("--skip-multiscale", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import torch

    results = {v: _run(v, args) for v in VARIANTS}
    from bnr.models.conformer import PRESETS

    cfg = PRESETS[args.preset]
    n = (args.size // cfg.patch_size) ** 2
    heads, depth = cfg.num_heads, cfg.depth
    block_mib = heads * (n + 1) ** 2 * 4 / 2**20
    print(
        f"seed inference, {args.preset} ({depth} blocks, {heads} heads), one {args.size}x"
        f"{args.size} image -> {n} tokens, {args.classes} classes, eval, no_grad, "
        f"{args.threads} thread(s), torch {torch.__version__}"
    )
    print(
        "peak = growth of ru_maxrss during the first forward + M*, over the peak after imports, "
        "model and input, in a fresh spawned process"
    )
    print()
    print("| formulation | first call (s) | best repeat (s) | peak RSS growth (MiB) |")
    print("|---|---|---|---|")
    for v in VARIANTS:
        r = results[v]
        best = f"{r['best_s']:.3f}" if args.repeats else "-"
        label = "stacking (baseline)" if v == "stacking" else "accumulated attn_sum (ours)"
        print(f"| {label} | {r['first_s']:.3f} | {best} | {r['peak_mib']:.0f} |")
    s, a = results["stacking"], results["accumulated"]
    mem = a["peak_mib"] / s["peak_mib"] if s["peak_mib"] > 0 else float("nan")
    print()
    print("| ours / stacking | first call time | best repeat time | peak RSS growth |")
    print("|---|---|---|---|")
    print(
        f"| ratio | {a['first_s'] / s['first_s']:.2f} | {a['best_s'] / s['best_s']:.2f} | "
        f"{mem:.2f} |"
    )
    print()
    diff = np.abs(s["result"] - a["result"]).max()
    scale = np.abs(s["result"]).max()
    print(
        f"M* stacking vs ours: max |diff| {diff:.2e} (max |M*| {scale:.2e}, "
        f"rel {diff / scale:.2e})"
    )
    print(
        f"(one block's per-head attention is {block_mib:.0f} MiB; stacking keeps {depth} of them "
        f"and a stacked copy: {2 * depth * block_mib:.0f} MiB)"
    )
    print(
        f"targets: memory <= 1/3 of stacking: {'met' if mem <= 1 / 3 else 'NOT met'}; "
        f"M* within 1e-4: {'met' if diff <= 1e-4 else 'NOT met'}; not slower (best repeat): "
        f"{'met' if a['best_s'] <= s['best_s'] else 'NOT met'}"
    )
    if not args.skip_multiscale:
        print()
        _throughput(args)


if __name__ == "__main__":
    main()
