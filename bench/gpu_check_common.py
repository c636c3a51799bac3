"""What the sections of bench/gpu_check.py share: the constants of the check, its
:class:`Settings` and the timing helpers (a budget, device syncs, timed loops, peak memory)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
VOC_TRAIN_AUG_IMAGES = 10_582  # SBD-augmented train_aug split (paper 4.1)
TARGET_TRAIN_HOURS = 1.0
TARGET_INFER_SPEEDUP = 2.0
TARGET_MIOU_POINTS = 0.1
NUM_CLASSES = 21  # VOC: background + 20
SECTIONS = ("train", "infer", "miou", "rw", "projection")
# Share of the time left that each measuring section may use (projection only computes).
WEIGHTS = {"train": 0.40, "infer": 0.25, "miou": 0.15, "rw": 0.20, "projection": 0.0}


@dataclass
class Settings:
    """Sizes of one run (GPU defaults; ``--smoke`` replaces them with tiny ones)."""

    device: str
    smoke: bool
    budget_s: float
    train_preset: str
    train_size: int
    train_batch: int
    train_warmup: int
    train_iters: int
    train_lr: float
    train_weight_decay: float
    train_adam_eps: float
    infer_preset: str
    infer_hw: tuple[int, int]
    infer_scales: tuple[int, ...]
    infer_images: int
    infer_rounds: int
    infer_classes: tuple[int, ...]
    infer_resample: str
    miou_images: int
    params: str
    checkpoint: str
    rw_preset: str
    rw_sizes: tuple[tuple[int, int], ...]
    rw_repeats: int
    rw_beta: float
    rw_logt: int
    rw_radius: int
    rw_bg_score: float
    epochs: int
    train_images: int


class Clock:
    """The global deadline and the share of it each section may use."""

    def __init__(self, start: float, budget_s: float) -> None:
        self.deadline = start + budget_s

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def share(self, section: str, remaining: Sequence[str]) -> float:
        total = sum(WEIGHTS[r] for r in remaining) or 1.0
        return max(0.0, self.left()) * WEIGHTS[section] / total


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_loop(
    step: Callable[[], Any], device: torch.device, warmup: int, max_iters: int, deadline: float,
    min_iters: int = 1,
) -> tuple[int, float]:
    """(timed iterations, seconds) of ``step`` after ``warmup`` untimed calls.

    One more untimed call measures a step, so that the timed calls end by ``deadline`` (a
    ``time.perf_counter()`` value), within ``min_iters`` .. ``max_iters`` calls.
    """
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    probe = time.perf_counter() - t0
    n = max(min_iters, min(max_iters, int((deadline - time.perf_counter()) / max(probe, 1e-6))))
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return n, time.perf_counter() - t0


def split_deadline(end: float, parts_left: int) -> float:
    """The deadline of the next of ``parts_left`` equal parts of the time until ``end``."""
    now = time.perf_counter()
    return now + max(0.0, end - now) / max(1, parts_left)


def precision_runtime(device: torch.device, bf16: bool) -> Any:
    """The ``bnr.runtime.Runtime`` of ``device`` in float32 or bfloat16 autocast (its
    ``autocast()`` is the pipeline's)."""
    from bnr.runtime import Runtime

    return Runtime(device, "bfloat16" if bf16 else "float32")


def free_memory(device: torch.device) -> None:
    """Drop cached blocks and reset the peak, so the next variant's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None  # torch's allocator statistics exist for CUDA only
    return torch.cuda.max_memory_allocated(device) / 2**20


def met_text(met: bool) -> str:
    return "met" if met else "NOT met"
