"""CAM training (paper 4.2): the Conformer learns from image-level labels with L_cls, plus
L_M** for BNR (eq. 9), through the one training engine (bnr/engine.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnr.cam.cam_model import build_cam_model, cam_model_meta
from bnr.cam.losses import total_loss
from bnr.config.params import Params
from bnr.data.classes import class_names
from bnr.data.transforms import TrainTransform
from bnr.data.voc import VocSegmentation
from bnr.distributed import SINGLE, DistContext
from bnr.engine import Loop, epoch_batches, fit, float_outputs, run_key, source_digest
from bnr.runtime import CPU, Runtime, seed_torch


def train_cam(
    params: Params,
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
    data, cfg = params.data, params.train_cam
    sizes = params.per_dataset.train_cam
    dataset = VocSegmentation(
        data.root, data.train_split, class_names(params.dataset), with_mask=False,
        transform=TrainTransform(sizes.crop_size, sizes.resize_long, cfg.color_jitter),
    )
    seed_torch(params.seed)
    model = build_cam_model(params)
    num_blocks = model.cfg.depth

    def adamw(m: nn.Module) -> torch.optim.Optimizer:
        no_decay = getattr(m, "no_weight_decay", lambda: set())()
        decay = [p for n, p in m.named_parameters() if n not in no_decay]
        keep = [p for n, p in m.named_parameters() if n in no_decay]
        return torch.optim.AdamW(
            [{"params": decay}, {"params": keep, "weight_decay": 0.0}],
            lr=sizes.lr, weight_decay=sizes.weight_decay, eps=cfg.adam_eps,
        )

    def step(net: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        images = runtime.to_device(batch["image"])  # (B/N, 3, crop, crop)
        labels = batch["labels"].to(runtime.device)  # (B/N, S)
        with runtime.autocast():
            outputs = net(images)
        loss, parts = total_loss(float_outputs(outputs), labels, params.method,
                                 params.noise_scale, num_blocks)
        return loss, {k: v for k, v in parts.items() if k != "loss"}

    key = run_key(params.protocol(), asdict(cfg), dataset.ids, source_digest(),
                  runtime.precision)
    per_epoch = len(epoch_batches(len(dataset), sizes.batch_size, params.seed, 0))
    loop = Loop(
        stage="train_cam", seed=params.seed, meta=cam_model_meta(params),
        protocol=params.protocol(), run_dir=Path(run_root) / key, num_periods=sizes.epochs,
        period_batches=lambda e: epoch_batches(len(dataset), sizes.batch_size, params.seed, e),
        total_steps=per_epoch * sizes.epochs, num_workers=cfg.num_workers,
        log_every=cfg.log_every,
        live_params={"method": params.method, "noise_scale": params.noise_scale,
                     "seed": params.seed, "model": sizes.model, "lr": sizes.lr},
    )
    out = fit(loop, model, adamw, dataset, step, model_out, curves_out, runtime=runtime, ctx=ctx,
              progress=progress, live_factory=live_factory, stop_after_period=stop_after_epoch)
    if out.interrupted:
        return {"interrupted_at_epoch": out.period}
    return {"epochs": sizes.epochs, "steps": out.steps, "history": out.history,
            "seconds_this_run": out.seconds_this_run, "train_images": len(dataset)}
