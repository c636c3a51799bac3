"""Segmenter training (the paper's last step), through the one training engine.

DeepLab (``train_segmenter.arch``) trained on the CRF pseudo labels of ``infer_split``
(``<label_dir>/<id>.png``): random rescale by a factor in the dataset block's
``train_segmenter.resize_scale``, horizontal flip, ImageNet normalisation, random crop
``train_segmenter.crop`` (image padding 0, label padding 255 = ignored), cross-entropy on the
logits upsampled to the crop (optionally weighted per class, ``class_weights``; TransCAM: plain),
poly SGD with DeepLab's (and TransCAM's) learning-rate groups
(:func:`bnr.models.resnet38.param_groups`, the head's multiplier ``head_lr_mult``).
A resume checkpoint every ``checkpoint_every`` iterations (a "block"); the batch of iteration
``it`` and its augmentation depend only on ``(seed, it)``, so a resumed run ends with the same
weights as an uninterrupted one (on the same machine).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from bnr.data.transforms import TrainTransform
from bnr.data.voc import IGNORE_INDEX, read_split
from bnr.distributed import SINGLE, DistContext, ddp_mean
from bnr.engine import (
    Loop,
    epoch_batches,
    files_digest,
    fit,
    poly_lr,
    run_key,
    source_digest,
)
from bnr.errors import BnrError
from bnr.io import read_image, read_label_png
from bnr.models.resnet38 import param_groups
from bnr.runtime import CPU, Runtime, seed_torch
from bnr.segmenter.segmenter_model import build_segmenter, segmenter_meta

CHECKPOINT_EVERY = 100  # iterations between resume checkpoints


class PseudoLabelDataset(Dataset):
    """Image + pseudo label, randomly rescaled, flipped and cropped: ``image`` (3, crop, crop)
    float32 and ``label`` (crop, crop) int64 (class ids, 255 = padding / ignore). The training
    loop addresses it through :class:`bnr.distributed.SeededItems` (per-sample seeds)."""

    def __init__(self, root: Path, ids: Sequence[str], label_dir: Path, crop: int,
                 scale: Sequence[float]) -> None:
        self.root, self.ids, self.label_dir = Path(root), list(ids), Path(label_dir)
        self.crop, self.scale = int(crop), (float(scale[0]), float(scale[1]))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        img_id = self.ids[index]
        image = read_image(self.root / "JPEGImages" / f"{img_id}.jpg")
        label = read_label_png(self.label_dir / f"{img_id}.png")
        if label.shape != image.shape[:2]:
            raise BnrError(f"{self.label_dir / img_id}.png: pseudo label size "
                           f"{label.shape[1]}x{label.shape[0]} differs from its image")
        long = max(image.shape[:2])
        lo, hi = (max(1, round(long * s)) for s in self.scale)  # random rescale as a long side
        transform = TrainTransform(self.crop, (lo, hi), (0.0, 0.0, 0.0, 0.0), flip=True)
        img, lab = transform(image, label)
        return {"image": img, "label": lab}


def check_pseudo_labels(label_dir: Path, ids: Sequence[str]) -> list[Path]:
    """The pseudo-label paths of ``ids``; a one-line error naming the first missing file."""
    paths = [Path(label_dir) / f"{i}.png" for i in ids]
    for path in paths:
        if not path.is_file():
            raise BnrError(f"{path}: pseudo label missing (run the crf stage)")
    return paths


def iteration_batches(
    n: int, batch: int, seed: int, start: int, stop: int
) -> Iterator[list[tuple[int, int]]]:
    """The batches of iterations ``start .. stop - 1``: lists of ``(index, sample_seed)``.

    Iterations run through :func:`bnr.cam.training.epoch_batches` epoch after epoch (an epoch has
    ``n // batch`` batches, or one batch of all ``n`` when ``n < batch``).
    """
    per_epoch = max(1, n // batch)
    epoch, batches = -1, []
    for it in range(start, stop):
        e, pos = divmod(it, per_epoch)
        if e != epoch:
            epoch, batches = e, epoch_batches(n, batch, seed, e)
        yield batches[pos]


def segmentation_loss(logits: torch.Tensor, label: torch.Tensor, ctx: DistContext = SINGLE,
                      align_corners: bool = True,
                      class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """logits (B, S, h, w) upsampled bilinearly to label (B, H, W) (``align_corners``: TransCAM
    True); cross-entropy averaged over the labelled pixels (255 ignored) of the whole global
    batch (all processes of ``ctx``). With ``class_weights`` (S,), each pixel's term is weighted
    by its label's weight and the sum divided by the sum of those weights (a weighted mean).
    A batch with no labelled pixel gives 0 (not NaN)."""
    up = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=align_corners)
    total = F.cross_entropy(up, label, weight=class_weights, ignore_index=IGNORE_INDEX,
                            reduction="sum")
    valid = label != IGNORE_INDEX
    if class_weights is None:
        labelled = valid.sum().to(total.dtype)
    else:
        labelled = class_weights[label[valid]].sum().to(total.dtype)
    return ddp_mean(total, labelled, ctx, min_count=1.0)


def label_class_weights(paths: Sequence[Path], num_classes: int) -> torch.Tensor:
    """``sqrt_median_frequency``: w_c = sqrt(median_c' f_c' / f_c), f_c the share of class c among
    the labelled pixels of the label PNGs ``paths`` (median over the classes present; an absent
    class gets 1). Rare classes weigh more, the square root halves the effect of the usual
    median-frequency balancing (Eigen and Fergus, ICCV 2015). Returns (S,) float32."""
    counts = np.zeros(num_classes, np.float64)
    for path in paths:
        lab = read_label_png(path)
        counts += np.bincount(lab[lab < num_classes].ravel(), minlength=num_classes)
    freq = counts / max(counts.sum(), 1.0)
    present = freq > 0
    weights = np.ones(num_classes)
    if present.any():
        weights[present] = np.sqrt(np.median(freq[present]) / freq[present])
    return torch.tensor(weights, dtype=torch.float32)


@dataclass(frozen=True)
class SegmenterTrainingPlan:
    """What :func:`train_segmenter` trains, as values (the train_segmenter step resolves them
    from ``datasets.<d>.data``, ``datasets.<d>.train_segmenter``, ``train_segmenter``, ...)."""

    dataset: str  # names the classes
    root: str  # dataset root
    split: str  # the split of the pseudo labels (infer_split)
    arch: str  # largefov or deeplabv3_resnet101
    backbone: str  # LargeFOV backbone preset
    bn_momentum: float  # head BatchNorm momentum
    class_weights: str  # loss weights: none (TransCAM) | sqrt_median_frequency of the labels
    head_lr_mult: float  # new layers' weights x this, their biases x 2 this (TransCAM 10)
    classifier_init: str  # LargeFOV classifier: kaiming (TransCAM) | normal (DeepLab-v1)
    weights: str  # pretrained backbone weights file ("" = from scratch)
    seed: int
    crop: int
    resize_scale: tuple  # (low, high) random rescale
    iterations: int
    batch_size: int  # global (over all processes)
    lr: float
    momentum: float
    weight_decay: float
    poly_power: float
    align_corners: bool  # logits -> crop upsampling in the loss
    num_workers: int | str  # loader workers, "auto" resolved by the runtime
    log_every: int
    protocol: dict = field(default_factory=dict)  # the run's params: kept in the checkpoint


def train_segmenter(
    plan: SegmenterTrainingPlan,
    model_out: Path,
    curves_out: Path,
    label_dir: Path,
    run_root: Path = Path("runs/train_segmenter"),
    stop_after_iteration: int | None = None,
    progress: bool = True,
    live_factory: Callable[..., Any] | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    runtime: Runtime = CPU,
    ctx: DistContext = SINGLE,
) -> dict:
    """Train the segmenter on the pseudo labels of ``infer_split``; write ``model_out`` and the
    dvclive curves (``curves_out``: train/loss, train/lr per ``log_every`` iterations,
    block means per ``checkpoint_every`` iterations).

    ``stop_after_iteration`` ends the call once that many iterations are done, as an
    interruption would (progress after the last checkpoint is lost and redone on resume).
    ``runtime`` / ``ctx``: device, precision and torchrun place (only the main process writes).
    Returns a summary (iterations, timings, final mean loss, the class weights used).
    """
    root = Path(plan.root)
    if not root.is_dir():
        raise BnrError(f"{root}: dataset root not found (run the download stage)")
    ids = read_split(root, plan.split)
    label_paths = check_pseudo_labels(label_dir, ids)
    meta = segmenter_meta(plan.arch, plan.backbone, plan.dataset)
    key = run_key(asdict(plan), ids, files_digest(label_paths), source_digest(),
                  runtime.precision)
    run_dir = Path(run_root) / key
    dataset = PseudoLabelDataset(root, ids, label_dir, plan.crop, plan.resize_scale)

    seed_torch(plan.seed)
    model = build_segmenter(plan.arch, plan.backbone, plan.dataset, plan.bn_momentum,
                            plan.weights, plan.classifier_init)
    mults = (1.0, 2.0, plan.head_lr_mult, 2 * plan.head_lr_mult)
    weights = (label_class_weights(label_paths, meta["num_classes"]).to(runtime.device)
               if plan.class_weights == "sqrt_median_frequency" else None)
    max_it, batch = plan.iterations, plan.batch_size

    def step(net: nn.Module, item: dict) -> tuple[torch.Tensor, dict[str, float]]:
        with runtime.autocast():
            logits = net(runtime.to_device(item["image"]))  # (B/N, S, h/8, w/8)
        return segmentation_loss(logits.float(), item["label"].to(runtime.device), ctx,
                                 plan.align_corners, weights), {}

    loop = Loop(
        stage="train_segmenter", seed=plan.seed, meta=meta, protocol=plan.protocol,
        run_dir=run_dir, num_periods=math.ceil(max_it / checkpoint_every),
        period_batches=lambda p: list(iteration_batches(
            len(dataset), batch, plan.seed, p * checkpoint_every,
            min((p + 1) * checkpoint_every, max_it))),
        total_steps=max_it, num_workers=plan.num_workers, log_every=plan.log_every,
        lr_at=lambda s: poly_lr(plan.lr, s, max_it, plan.poly_power),
        period_name="block", hint="; lower train_segmenter.lr",
        live_params={"seed": plan.seed, "arch": plan.arch, "backbone": meta["preset"],
                     "lr": plan.lr, "crop": plan.crop,
                     "batch_size": batch, "iterations": max_it},
    )
    out = fit(loop, model,
              lambda m: torch.optim.SGD(param_groups(m, plan.lr, plan.weight_decay, mults),
                                        lr=plan.lr, momentum=plan.momentum,
                                        weight_decay=plan.weight_decay),
              dataset, step, model_out, curves_out, runtime=runtime, ctx=ctx,
              progress=progress, live_factory=live_factory, stop_after_step=stop_after_iteration)
    if out.interrupted:
        return {"interrupted_at_iteration": out.steps}
    seconds, start = out.seconds_this_run, out.resumed_from_step
    history = out.history
    return {"iterations": max_it, "resumed_from": start, "history": history,
            "train_images": len(dataset), "seconds_this_run": seconds,
            "seconds_per_iteration": round(seconds / max(1, max_it - start), 4),
            "final_loss": history[-1]["loss"] if history else None,
            "class_weights": None if weights is None else [round(float(w), 4) for w in weights]}
