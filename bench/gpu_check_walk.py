"""Sections 4-5 of bench/gpu_check.py: the random walk (AffinityNet forward + the library's
sparse walk) per image, and the projected VOC train_cam wall time from section 1's rate."""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.gpu_check_common import (
    NUM_CLASSES,
    TARGET_TRAIN_HOURS,
    Settings,
    free_memory,
    met_text,
    peak_mib,
    precision_runtime,
    split_deadline,
    sync,
)

# ----------------------------------------------------------------------------------------------
# 4. random walk


def section_rw(s: Settings, device: torch.device, seconds: float) -> dict:
    """AffinityNet forward + the library's sparse walk (``random_walk_segmentation``, float64,
    on the device its affinities are on, as the random_walk stage runs it) per image. Rows: the
    walk on the GPU after a float32 / bfloat16 forward, and the walk on the CPU after a
    bfloat16 forward (for comparison).
    """
    from bnr.affinity.affinity_model import STRIDE, build_affinity_model
    from bnr.affinity.random_walk import random_walk_segmentation
    from bnr.affinity.walk import padded_size
    from bnr.data.transforms import EvalTransform

    torch.manual_seed(0)
    with torch.device(device):
        model = build_affinity_model(s.rw_preset).eval()
    rng = np.random.default_rng(0)
    keys = list(range(1, NUM_CLASSES))  # every foreground class: the worst case per image
    to_tensor = EvalTransform()
    rows = []
    cpu = torch.device("cpu")
    # (size, bfloat16 forward, walk device); on a CPU run the last variant repeats the second
    jobs = [(hw, bf16, walk) for hw in s.rw_sizes
            for bf16, walk in ((False, device), (True, device), (True, cpu))]
    end = time.perf_counter() + seconds
    for i, ((h, w), bf16, walk_device) in enumerate(jobs):
        free_memory(device)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cams = torch.from_numpy(rng.random((len(keys), h, w), dtype=np.float32))
        ids = torch.tensor([0, *keys], dtype=torch.uint8)
        times = {"forward": 0.0, "walk": 0.0}

        def one(record: bool, image: np.ndarray = image, cams: torch.Tensor = cams,
                h: int = h, w: int = w, bf16: bool = bf16, ids: torch.Tensor = ids,
                times: dict = times, model: torch.nn.Module = model,
                walk_device: torch.device = walk_device) -> np.ndarray:
            t0 = time.perf_counter()
            x, _ = to_tensor(image, None)
            hp, wp = padded_size(h, w)
            x = torch.nn.functional.pad(x, (0, wp - w, 0, hp - h)).to(device)
            with torch.no_grad(), precision_runtime(device, bf16).autocast():
                aff, src, dst = model.affinity(x[None], s.rw_radius)
            aff = aff[0].double()  # the stage's walk: float64 (aff is raised to the 14th power)
            sync(device)
            t1 = time.perf_counter()
            aff, src, dst = aff.to(walk_device), src.to(walk_device), dst.to(walk_device)
            label = random_walk_segmentation(
                cams, keys, aff, src, dst, beta=s.rw_beta, logt=s.rw_logt,
                bg_score=s.rw_bg_score, method="sparse", stride=STRIDE)[:h, :w]
            sync(device)
            if record:
                times["forward"] += t1 - t0
                times["walk"] += time.perf_counter() - t1
            return label

        deadline = split_deadline(end, len(jobs) - i)
        one(False)  # warm-up (cuSPARSE / cuDNN handles, allocator)
        n = 0
        while n < s.rw_repeats and (n == 0 or time.perf_counter() < deadline):
            label = one(True)
            n += 1
        if label.shape != (h, w):
            raise RuntimeError(f"random walk labels {label.shape} for a {h}x{w} image")
        rows.append({
            "image": f"{h}x{w}",
            "affinity_forward": "bfloat16 autocast" if bf16 else "float32",
            "walk_on": walk_device.type,
            "s_per_image": (times["forward"] + times["walk"]) / n,
            "forward_s": times["forward"] / n,
            "walk_s": times["walk"] / n,
            "timed_images": n,
            "peak_mib": peak_mib(device),
        })
    return {
        "columns": ["image", "affinity_forward", "walk_on", "s_per_image", "forward_s", "walk_s",
                    "timed_images", "peak_mib"],
        "rows": rows,
        "notes": [
            f"AffinityNet {s.rw_preset} (random init), radius {s.rw_radius}, beta {s.rw_beta:g}, "
            f"logt {s.rw_logt} ({2 ** s.rw_logt} sparse steps), background + {len(keys)} "
            f"classes, walk in float32 (one CPU thread on the CPU, as the library sets it); "
            "forward_s includes normalising and uploading the image, walk_s moving the "
            "affinities to the walk's device and the labels back",
        ],
    }


# ----------------------------------------------------------------------------------------------
# 5. projection


def section_projection(s: Settings, train: dict | None) -> dict:
    if not train or "rows" not in train:
        raise RuntimeError("no train_cam throughput (section 1 did not run or failed)")
    images = s.epochs * s.train_images
    rows = [{"variant": r["variant"], "images_per_s": r["images_per_s"],
             "hours": images / r["images_per_s"] / 3600}
            for r in train["rows"] if "images_per_s" in r]
    bf16 = [r for r in rows if r["variant"].startswith("bfloat16")]
    if not bf16:
        raise RuntimeError("no bfloat16 train_cam throughput (section 1's bf16 variant failed)")
    bf16_hours = bf16[0]["hours"]
    met = bf16_hours < TARGET_TRAIN_HOURS
    return {
        "columns": ["variant", "images_per_s", "hours"],
        "rows": rows,
        "hours_bf16": bf16_hours,
        "target_met": met,
        "notes": [
            f"{s.epochs} epochs x {s.train_images:,} images = {images:,} images at the measured "
            f"{s.train_preset} {s.train_size}x{s.train_size} batch-{s.train_batch} rate "
            "(step only: no data loading, no checkpointing)"
            + (" -- smoke sizes, not the paper's" if s.smoke else ""),
            f"bfloat16: {bf16_hours:.2f} h (target under {TARGET_TRAIN_HOURS:g} h: "
            f"{met_text(met)})",
        ],
    }
