"""CAM training (paper 4.2): the Conformer learns from image-level labels with L_cls, plus
L_M** for BNR (eq. 9), through the one training engine (bnr/engine.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnr.cam.cam_model import build_cam_model, cam_model_meta
from bnr.cam.losses import total_loss
from bnr.data.classes import class_names
from bnr.data.transforms import TrainTransform
from bnr.data.voc import VocSegmentation
from bnr.distributed import SINGLE, DistContext
from bnr.engine import Loop, epoch_batches, fit, float_outputs, run_key, source_digest
from bnr.runtime import CPU, Runtime, seed_torch


@dataclass(frozen=True)
class CamTrainingPlan:
    """What :func:`train_cam` trains, as values (the train_cam step resolves them from params:
    ``datasets.<d>.data``, ``datasets.<d>.train_cam``, ``train_cam``, ``method``, ...)."""

    dataset: str  # names the classes
    root: str  # dataset root
    split: str  # the training split (train_split)
    model: str  # Conformer preset
    init: str  # attention initialisation (official, mimetic)
    weights: str  # pretrained weights file ("" = from scratch)
    method: str  # transcam or bnr (the loss)
    noise_scale: float | None  # BNR's noise scale (eq. 6); None: without noise, M** = M*
    seed: int
    crop_size: int
    resize_long: tuple  # (low, high) of the random long-side resize
    color_jitter: tuple  # brightness, contrast, saturation, hue
    epochs: int
    batch_size: int  # global (over all processes)
    lr: float
    weight_decay: float
    adam_eps: float
    num_workers: int | str  # loader workers, "auto" resolved by the runtime
    log_every: int
    protocol: dict = field(default_factory=dict)  # the run's params: kept in the checkpoint


def cam_optimizer(model: nn.Module, lr: float, weight_decay: float,
                  adam_eps: float) -> torch.optim.Optimizer:
    """AdamW of the CAM network: no weight decay on ``model.no_weight_decay()``'s parameters."""
    no_decay = getattr(model, "no_weight_decay", lambda: set())()
    decay = [p for n, p in model.named_parameters() if n not in no_decay]
    keep = [p for n, p in model.named_parameters() if n in no_decay]
    return torch.optim.AdamW(
        [{"params": decay}, {"params": keep, "weight_decay": 0.0}],
        lr=lr, weight_decay=weight_decay, eps=adam_eps,
    )


def cam_training_step(
    method: str, noise_scale: float, num_blocks: int, runtime: Runtime = CPU
) -> Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, float]]]:
    """The engine's step function of CAM training: ``step(net, batch) -> (loss, terms)``, the
    forward pass of ``batch["image"]`` under ``runtime``'s autocast, the loss (``method``:
    transcam or bnr, eq. 9) in float32 on its outputs; ``terms`` without the total."""

    def step(net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        images = runtime.to_device(batch["image"])  # (B/N, 3, crop, crop)
        labels = batch["labels"].to(runtime.device)  # (B/N, S)
        with runtime.autocast():
            outputs = net(images)
        loss, parts = total_loss(float_outputs(outputs), labels, method, noise_scale,
                                 num_blocks)
        return loss, {k: v for k, v in parts.items() if k != "loss"}

    return step


def train_cam(
    plan: CamTrainingPlan,
    model_out: Path,
    curves_out: Path,
    run_root: Path = Path("runs/train_cam"),
    stop_after_epoch: int | None = None,
    progress: bool = True,
    live_factory: Callable[..., Any] | None = None,
    runtime: Runtime = CPU,
    ctx: DistContext = SINGLE,
) -> dict:
    """Train the CAM network; write ``model_out`` and the dvclive curves to ``curves_out``.

    ``stop_after_epoch`` ends the call after that many epochs (as an interruption would),
    leaving the resume checkpoint. ``runtime`` / ``ctx``: device, precision and this process's
    place in a torchrun job (:func:`bnr.engine.training_session`). Returns a summary
    (per-epoch mean losses, timings); only the main process writes files.
    """
    dataset = VocSegmentation(
        plan.root, plan.split, class_names(plan.dataset), with_mask=False,
        transform=TrainTransform(plan.crop_size, plan.resize_long, plan.color_jitter),
    )
    seed_torch(plan.seed)
    model = build_cam_model(plan.model, plan.dataset, plan.init, plan.weights)
    num_blocks = model.cfg.depth

    def adamw(m: nn.Module) -> torch.optim.Optimizer:
        return cam_optimizer(m, plan.lr, plan.weight_decay, plan.adam_eps)

    step = cam_training_step(plan.method, plan.noise_scale, num_blocks, runtime)

    key = run_key(asdict(plan), dataset.ids, source_digest(), runtime.precision)
    per_epoch = len(epoch_batches(len(dataset), plan.batch_size, plan.seed, 0))
    loop = Loop(
        stage="train_cam", seed=plan.seed, meta=cam_model_meta(plan.model, plan.dataset),
        protocol=plan.protocol, run_dir=Path(run_root) / key, num_periods=plan.epochs,
        period_batches=lambda e: epoch_batches(len(dataset), plan.batch_size, plan.seed, e),
        total_steps=per_epoch * plan.epochs, num_workers=plan.num_workers,
        log_every=plan.log_every,
        live_params={"method": plan.method,
                     "noise_scale": "none" if plan.noise_scale is None else plan.noise_scale,
                     "seed": plan.seed, "model": plan.model, "lr": plan.lr},
    )
    out = fit(loop, model, adamw, dataset, step, model_out, curves_out, runtime=runtime, ctx=ctx,
              progress=progress, live_factory=live_factory, stop_after_period=stop_after_epoch)
    if out.interrupted:
        return {"interrupted_at_epoch": out.period}
    return {"epochs": plan.epochs, "steps": out.steps, "history": out.history,
            "seconds_this_run": out.seconds_this_run, "train_images": len(dataset)}
