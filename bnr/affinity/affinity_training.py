"""AffinityNet training (PSA, as configured by TransCAM) through the one training engine.

Affinity labels from image + seed CAM (dense CRF of the arg-max with a fixed background score
``low_bg`` -> la and ``high_bg`` -> ha; la foreground kept, la+ha background -> 0, the rest
ignored), computed once per run with :func:`crf_map` and cached in the resume directory;
AffinityNet (ResNet-38d) trained on jitter / crop / flip as TransCAM (no rescaling; padding
black, labels ``pad_label``), labels subsampled by 8; poly SGD over PSA's lr groups.

The label CRF uses ``train_affinity.label_crf`` (TransCAM uses the same settings as the final
CRF; separate keys let a CRF ablation re-run only from the crf stage on).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from bnr.affinity.affinity_labels import affinity_labels_from_cam, affinity_loss, pair_labels
from bnr.affinity.affinity_model import STRIDE, affinity_model_meta, build_affinity_model
from bnr.cam.seeds import checked_cams
from bnr.data.classes import class_names
from bnr.data.transforms import PadCropTransform
from bnr.data.voc import read_split
from bnr.distributed import SINGLE, DistContext, barrier, ddp_mean
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
from bnr.io import atomic_path, read_image, read_label_png, write_label_png
from bnr.models.pairs import feature_affinity
from bnr.models.resnet38 import param_groups
from bnr.pseudo_labels.crf import crf_map, dense_crf_labels
from bnr.pseudo_labels.crf_settings import CrfSettings
from bnr.runtime import CPU, Runtime, seed_torch

LOG_EVERY = 10  # steps between logged loss values
AFFINITY_JITTER = (0.3, 0.3, 0.3, 0.1)  # PSA / TransCAM colour jitter
PAD_LABELS = {"background": 0, "ignore": 255}  # train_affinity.pad_label


def _affinity_label_one(payload: tuple) -> np.ndarray:
    """Worker: full-resolution affinity label map (255 = ignore) of one image."""
    image_path, cam_dir, img_id, low_bg, high_bg, n_labels, kw = payload
    image = read_image(image_path)
    classes, cams = checked_cams(Path(cam_dir), img_id, image.shape[:2])
    if len(classes) == 0:  # no foreground: every pixel is (confident) background
        return np.zeros(image.shape[:2], np.uint8)

    def crf_fn(img: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
        return dense_crf_labels(img, labels, n, **kw)

    return affinity_labels_from_cam(
        image, cams, [int(c) for c in classes], low_bg, high_bg, crf_fn=crf_fn,
        n_labels=n_labels, stride=1,
    )


def write_affinity_labels(
    root: Path,
    ids: Sequence[str],
    cam_dir: Path,
    out_dir: Path,
    *,
    low_bg: float,
    high_bg: float,
    n_labels: int,
    crf: CrfSettings,
    progress: bool = True,
) -> dict:
    """Full-resolution affinity labels of ``ids`` as PNGs in ``out_dir`` (atomic directory).

    Returns counts: images, and images with no foreground class (all background, kept).
    """
    root = Path(root)
    kw = crf.kwargs
    items = (
        (i, (root / "JPEGImages" / f"{i}.jpg", str(cam_dir), i, low_bg, high_bg, n_labels, kw))
        for i in ids
    )
    no_fg = 0
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        results = crf_map(_affinity_label_one, items, crf.workers)
        for img_id, label in tqdm(results, total=len(ids), desc="affinity labels",
                                  disable=not progress):
            no_fg += int(not (label != 0).any() and not (label == 255).any())
            write_label_png(tmp / f"{img_id}.png", label)
    return {"images": len(ids), "all_background": no_fg}


class AffinityDataset(Dataset):
    """Image + cached affinity labels -> ``image`` (3, crop, crop) float and ``label``
    (ceil(crop/8), ceil(crop/8)) int64 (0 bg, class ids, 255 ignore).

    Augmentation of TransCAM / PSA ``train_aff.py`` (:class:`PadCropTransform`; neither
    rescales): colour jitter, random crop into a black container (label padding ``pad_label``:
    0 = background pairs as TransCAM, 255 = ignored), flip, normalisation; then the label map
    is subsampled by 8 (pixel (8i, 8j), TransCAM's ``RescaleNearest(1/8)``).
    """

    def __init__(self, root: Path, ids: Sequence[str], label_dir: Path, crop: int,
                 pad_label: int = 0) -> None:
        self.root, self.ids, self.label_dir = Path(root), list(ids), Path(label_dir)
        self.transform = PadCropTransform(crop, AFFINITY_JITTER, pad_label)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        img_id = self.ids[index]
        image = read_image(self.root / "JPEGImages" / f"{img_id}.jpg")
        label = read_label_png(self.label_dir / f"{img_id}.png")
        if label.shape != image.shape[:2]:
            raise BnrError(f"{self.label_dir / img_id}.png: affinity label size differs from image")
        img, lab = self.transform(image, label)
        return {"id": img_id, "image": img, "label": lab[::STRIDE, ::STRIDE].contiguous()}


@dataclass(frozen=True)
class AffinityTrainingPlan:
    """What :func:`train_affinity` trains, as values (the train_affinity step resolves them
    from ``datasets.<d>.data``, ``datasets.<d>.train_affinity``, ``train_affinity``, ...)."""

    dataset: str  # names the classes
    root: str  # dataset root
    split: str  # the split whose seed CAMs give the labels (infer_split)
    model: str  # ResNet-38d preset
    weights: str  # pretrained weights file ("" = from scratch)
    seed: int
    crop: int
    epochs: int
    batch_size: int  # global (over all processes)
    lr: float
    momentum: float
    weight_decay: float
    poly_power: float  # poly learning-rate decay (PSA, TransCAM: 0.9)
    low_bg: float  # fixed background score of la (confident foreground)
    high_bg: float  # fixed background score of ha (confident background)
    radius: int  # pair radius on the 1/8 feature map
    pad_label: str  # crop padding labels: background or ignore
    label_crf: CrfSettings  # the CRF of the la / ha labels
    num_workers: int | str  # loader workers, "auto" resolved by the runtime
    protocol: dict = field(default_factory=dict)  # the run's params: kept in the checkpoint


def train_affinity(
    plan: AffinityTrainingPlan,
    model_out: Path,
    curves_out: Path,
    cam_dir: Path,
    run_root: Path = Path("runs/train_affinity"),
    stop_after_epoch: int | None = None,
    progress: bool = True,
    live_factory: Callable[..., Any] | None = None,
    runtime: Runtime = CPU,
    ctx: DistContext = SINGLE,
) -> dict:
    """Train AffinityNet on the seed CAMs of ``infer_split``; write ``model_out`` and curves.

    Resumes from ``run_root/<key>/last.pt`` (key: params, ids, CAM bytes, library source);
    ``stop_after_epoch`` ends the call early as an interruption would. ``runtime`` / ``ctx``:
    device, precision and torchrun place (the main process writes the affinity labels and
    every output; the loss divides by the pair counts of the whole global batch). Returns a
    summary.
    """
    names = class_names(plan.dataset)
    root = Path(plan.root)
    if not root.is_dir():
        raise BnrError(f"{root}: dataset root not found (run the download stage)")
    min_crop = (2 * plan.radius - 1) * STRIDE
    if plan.crop < min_crop:
        raise BnrError(
            f"params.yaml: datasets.{plan.dataset}.train_affinity.crop {plan.crop} is too "
            f"small for train_affinity.radius {plan.radius} (needs >= {min_crop})"
        )
    ids = read_split(root, plan.split)
    cam_paths = [Path(cam_dir) / f"{i}.npz" for i in ids]
    key = run_key(asdict(plan), ids, files_digest(cam_paths), source_digest(), runtime.precision)
    run_dir = Path(run_root) / key
    label_dir = run_dir / "labels"
    started = time.time()
    label_stats = None
    if ctx.is_main and not label_dir.is_dir():
        label_stats = write_affinity_labels(
            root, ids, Path(cam_dir), label_dir, low_bg=plan.low_bg, high_bg=plan.high_bg,
            n_labels=len(names), crf=plan.label_crf, progress=progress,
        )
    barrier(ctx)  # the other processes wait for the labels
    label_seconds = round(time.time() - started, 1)
    dataset = AffinityDataset(root, ids, label_dir, plan.crop, PAD_LABELS[plan.pad_label])

    seed_torch(plan.seed)
    model = build_affinity_model(plan.model, plan.weights)
    batch = plan.batch_size
    per_epoch = len(epoch_batches(len(dataset), batch, plan.seed, 0))
    max_step = per_epoch * plan.epochs

    def global_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        return ddp_mean(total, count, ctx, eps=1e-5)

    def step(net: nn.Module, item: dict) -> tuple[torch.Tensor, dict[str, float]]:
        with runtime.autocast():
            feats = net(runtime.to_device(item["image"]))  # (B/N, C, h, w)
        aff, src, dst = feature_affinity(feats, plan.radius)  # (B/N, P) float32
        bg_pos, fg_pos, neg = pair_labels(item["label"].to(runtime.device), src, dst)
        loss, parts = affinity_loss(aff, bg_pos, fg_pos, neg, mean=global_mean)
        return loss, {k: float(v) for k, v in parts.items()}

    loop = Loop(
        stage="train_affinity", seed=plan.seed, meta=affinity_model_meta(plan.model, plan.dataset),
        protocol=plan.protocol, run_dir=run_dir, num_periods=plan.epochs,
        period_batches=lambda e: epoch_batches(len(dataset), batch, plan.seed, e),
        total_steps=max_step, num_workers=plan.num_workers, log_every=LOG_EVERY,
        lr_at=lambda s: poly_lr(plan.lr, s, max_step, plan.poly_power),
        log_keys=("loss", "bg", "fg", "neg"), summed=("bg_count", "fg_count", "neg_count"),
        live_params={"seed": plan.seed, "model": plan.model,
                     "lr": plan.lr, "crop": plan.crop},
    )
    train_started = time.time()
    out = fit(loop, model,
              lambda m: torch.optim.SGD(param_groups(m, plan.lr, plan.weight_decay),
                                        lr=plan.lr, momentum=plan.momentum,
                                        weight_decay=plan.weight_decay),
              dataset, step, model_out, curves_out, runtime=runtime, ctx=ctx,
              progress=progress, live_factory=live_factory, stop_after_period=stop_after_epoch)
    if out.interrupted:
        return {"interrupted_at_epoch": out.period}
    return {"epochs": plan.epochs, "steps": out.steps, "history": out.history,
            "train_images": len(dataset), "affinity_labels": label_stats,
            "label_seconds": label_seconds,
            "seconds_this_run": round(time.time() - started, 1),
            "train_seconds_this_run": round(time.time() - train_started, 1)}
