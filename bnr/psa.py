"""PSA post-processing of the seed CAMs (Ahn & Kwak 2018, as configured by TransCAM).

Three stages, each a function here (the ``stages/`` CLIs are thin wrappers):

* :func:`train_affinity`: affinity labels from image + seed CAM (dense CRF of the arg-max with
  a fixed background score ``low_bg`` -> la and ``high_bg`` -> ha; la foreground kept, la+ha
  background -> 0, the rest ignored), computed once per run with :func:`crf_map` and cached in
  the resume directory; AffinityNet (ResNet-38d) trained on random resize / jitter / flip /
  crop (label padding 255), labels subsampled by 8; poly SGD with the 1x/2x/10x/20x groups;
  per-epoch resumable checkpoints and dvclive curves like :func:`bnr.training.train_cam`.
* :func:`random_walk_split`: AffinityNet affinities on the zero-padded image, sparse random
  walk of the CAMs (fixed background score) -> ``<out>/<id>.png`` VOC palette labels.
* :func:`crf_split`: label dense CRF of the random-walk labels over a process pool ->
  ``<out>/<id>.png``; :func:`evaluate_pseudo_labels`: mIoU of seeds / random walk / CRF.

The affinity-label CRF uses ``train_affinity.label_crf`` (TransCAM uses the same settings as
the final CRF; separate keys let a CRF ablation re-run only from the crf stage on).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from bnr.cam import cams_to_seeds
from bnr.config import CrfConfig, Params
from bnr.data.classes import class_names
from bnr.data.transforms import EvalTransform, TrainTransform
from bnr.data.voc import read_mask, read_split
from bnr.distributed import (
    SINGLE,
    DistContext,
    SeededItems,
    barrier,
    ddp_mean,
    mean_over_processes,
)
from bnr.errors import BnrError
from bnr.io import atomic_path, read_image, read_label_png, voc_palette
from bnr.metrics import confusion_matrix, iou_per_class, mean_iou
from bnr.models.resnet38 import (
    AffinityNet,
    load_imagenet_weights,
    resnet38d,
    resnet38d_tiny,
)
from bnr.postprocessing.affinity import (
    affinity_labels_from_cam,
    affinity_loss,
    feature_affinity,
    pair_labels,
)
from bnr.postprocessing.crf import crf_map, dense_crf_labels
from bnr.postprocessing.random_walk import random_walk_segmentation
from bnr.pretrained import pretrained_path
from bnr.runtime import CPU, Runtime
from bnr.seeds import load_cams
from bnr.training import (
    cpu_state,
    epoch_batches,
    epoch_seed,
    finish_run,
    load_checkpoint,
    load_state_strict,
    open_live,
    place_for_training,
    poly_sgd,
    resume_state,
    run_key,
    save_checkpoint,
    shard_loader,
    source_digest,
)

STRIDE = 8  # AffinityNet output stride
POLY_POWER = 0.9
LOG_EVERY = 10  # steps between logged loss values
AFFINITY_JITTER = (0.3, 0.3, 0.3, 0.1)  # PSA / TransCAM colour jitter
RESIZE_RATIO = 768 / 448  # TransCAM: long side random in [448, 768] for crop 448
PRESETS: dict[str, Callable[[], Any]] = {"resnet38d": resnet38d, "resnet38d_tiny": resnet38d_tiny}


# ----------------------------------------------------------------------------------------------
# Small helpers


def crf_kwargs(cfg: CrfConfig) -> dict:
    """The keyword arguments of :func:`dense_crf_labels` from the ``crf`` params block."""
    return {k: v for k, v in asdict(cfg).items() if k != "workers"}


def crf_workers(cfg: CrfConfig) -> int | None:
    """``crf.workers``: 0 -> None (all available cores, as :func:`crf_map` counts them)."""
    return None if cfg.workers == 0 else cfg.workers


def write_palette_png(path: Path, label: np.ndarray) -> None:
    """Write (H, W) uint8 labels as a VOC palette PNG (non-atomic: inside an atomic dir)."""
    im = Image.fromarray(np.asarray(label, np.uint8), mode="P")
    im.putpalette(voc_palette())
    im.save(path, format="PNG")


def checked_cams(cam_dir: Path, img_id: str, image_hw: tuple[int, int]):
    """(classes, cams) of ``img_id``; a clear error if the CAM size differs from its image."""
    classes, cams = load_cams(cam_dir, img_id)
    if cams.shape[1:] != tuple(image_hw):
        raise BnrError(
            f"{Path(cam_dir) / (img_id + '.npz')}: seed CAM size {cams.shape[2]}x{cams.shape[1]} "
            f"differs from its image {image_hw[1]}x{image_hw[0]} (re-run infer_seeds)"
        )
    return classes, cams


def files_digest(paths: Sequence[Path]) -> str:
    """sha256 over the names and bytes of ``paths`` (a resume never mixes input CAMs)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# The model


def affinity_model_meta(params: Params) -> dict:
    """What an affinity checkpoint must agree on to be loaded."""
    return {"kind": "affinity", "preset": params.data.affinity_model, "dataset": params.dataset}


def build_affinity_model(preset: str, pretrained: str = "") -> AffinityNet:
    """A fresh AffinityNet on ResNet-38d ``preset`` (ImageNet weights if ``pretrained``)."""
    if preset not in PRESETS:
        raise BnrError(
            f"unknown affinity_model {preset!r} (known: {', '.join(sorted(PRESETS))})"
        )
    model = AffinityNet(PRESETS[preset]())
    if pretrained:
        load_imagenet_weights(model, pretrained)
    return model


def load_affinity_model(params: Params, path: Path) -> AffinityNet:
    """The trained AffinityNet of ``path`` (strict, meta-checked); one line if it is missing."""
    path = Path(path)
    if not path.is_file():
        raise BnrError(f"{path}: affinity checkpoint not found (run the train_affinity stage)")
    model = build_affinity_model(params.data.affinity_model)
    load_state_strict(model, load_checkpoint(path, affinity_model_meta(params))["model"], path)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------
# Affinity labels and their dataset


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
    crf: CrfConfig,
    progress: bool = True,
) -> dict:
    """Full-resolution affinity labels of ``ids`` as PNGs in ``out_dir`` (atomic directory).

    Returns counts: images, and images with no foreground class (all background, kept).
    """
    root = Path(root)
    kw = crf_kwargs(crf)
    items = (
        (i, (root / "JPEGImages" / f"{i}.jpg", str(cam_dir), i, low_bg, high_bg, n_labels, kw))
        for i in ids
    )
    no_fg = 0
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        results = crf_map(_affinity_label_one, items, crf_workers(crf))
        for img_id, label in tqdm(results, total=len(ids), desc="affinity labels",
                                  disable=not progress):
            no_fg += int(not (label != 0).any() and not (label == 255).any())
            write_palette_png(tmp / f"{img_id}.png", label)
    return {"images": len(ids), "all_background": no_fg}


class AffinityDataset(Dataset):
    """Image + cached affinity labels -> ``image`` (3, crop, crop) float and ``label``
    (ceil(crop/8), ceil(crop/8)) int64 (0 bg, class ids, 255 ignore).

    Augmentation: random long-side resize in [crop, crop * 768 / 448], colour jitter, flip,
    random crop with image padding 0 and label padding 255 (the joint ``TrainTransform``), then
    the label map is subsampled by 8 (pixel (8i, 8j), TransCAM's ``RescaleNearest(1/8)``).
    """

    def __init__(self, root: Path, ids: Sequence[str], label_dir: Path, crop: int) -> None:
        self.root, self.ids, self.label_dir = Path(root), list(ids), Path(label_dir)
        hi = max(crop, round(crop * RESIZE_RATIO))
        self.transform = TrainTransform(crop, (crop, hi), AFFINITY_JITTER)

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


# ----------------------------------------------------------------------------------------------
# Training


def poly_lr(base: float, step: int, max_step: int, power: float = POLY_POWER) -> float:
    return base * (1 - step / max_step) ** power if step < max_step else 0.0


def train_affinity(
    params: Params,
    model_out: Path,
    curves_out: Path,
    cam_dir: Path = Path("data/cams"),
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
    data, cfg = params.data, params.train_affinity
    names = class_names(params.dataset)
    root = Path(data.root)
    if not root.is_dir():
        raise BnrError(f"{root}: dataset root not found (run the download stage)")
    min_crop = (2 * cfg.radius - 1) * STRIDE
    if data.affinity_crop < min_crop:
        raise BnrError(
            f"params.yaml: datasets.{params.dataset}.affinity_crop {data.affinity_crop} is too "
            f"small for train_affinity.radius {cfg.radius} (needs >= {min_crop})"
        )
    ids = read_split(root, data.infer_split)
    cam_paths = [Path(cam_dir) / f"{i}.npz" for i in ids]
    meta = affinity_model_meta(params)
    key = run_key(params.protocol(), asdict(cfg), ids,
                  files_digest(cam_paths), source_digest(), runtime.precision)
    run_dir = Path(run_root) / key
    ckpt_path, label_dir = run_dir / "last.pt", run_dir / "labels"
    started = time.time()
    label_stats = None
    if ctx.is_main and not label_dir.is_dir():
        label_stats = write_affinity_labels(
            root, ids, Path(cam_dir), label_dir, low_bg=cfg.low_bg, high_bg=cfg.high_bg,
            n_labels=len(names), crf=cfg.label_crf, progress=progress,
        )
    barrier(ctx)  # the other processes wait for the labels
    label_seconds = round(time.time() - started, 1)
    dataset = AffinityDataset(root, ids, label_dir, data.affinity_crop)

    torch.manual_seed(params.seed)
    model = build_affinity_model(data.affinity_model,
                                 pretrained_path(cfg.pretrained, params.dataset, "resnet38"))
    batch = data.affinity_batch_size
    per_epoch = max(1, len(dataset) // batch)
    max_step = per_epoch * data.affinity_epochs
    state = resume_state(ckpt_path, meta, model, "train_affinity", ctx)
    start_epoch, step, history = (0, 0, []) if state is None else (
        state["epoch"], state["step"], state["history"])
    model, optimizer, net = place_for_training(
        model, lambda m: poly_sgd(m, data.affinity_lr, cfg.momentum, cfg.weight_decay),
        state, runtime, ctx)
    items = SeededItems(dataset)

    def global_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        return ddp_mean(total, count, ctx, eps=1e-5)

    live = open_live(run_dir, start_epoch > 0, live_factory, ctx)
    if start_epoch == 0:
        live.log_params({"seed": params.seed, "model": data.affinity_model,
                         "lr": data.affinity_lr, "crop": data.affinity_crop})
    train_started = time.time()
    for epoch in range(start_epoch, data.affinity_epochs):
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            live.end()
            return {"interrupted_at_epoch": epoch}
        torch.manual_seed(epoch_seed(params.seed, epoch) + ctx.rank)  # dropout
        batches = epoch_batches(len(dataset), batch, params.seed, epoch)
        loader = shard_loader(items, batches, ctx, runtime, cfg.num_workers)
        net.train()
        sums: dict[str, float] = {}
        count = 0
        epoch_started = time.time()
        bar = tqdm(loader, desc=f"train_affinity {epoch + 1}/{data.affinity_epochs}",
                   disable=not (progress and ctx.is_main), leave=False)
        for item in bar:
            lr = poly_lr(data.affinity_lr, step, max_step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_mult"]
            with runtime.autocast():
                feats = net(runtime.to_device(item["image"]))  # (B/N, C, h, w)
            aff, src, dst = feature_affinity(feats, cfg.radius)  # (B/N, P) float32
            bg_pos, fg_pos, neg = pair_labels(item["label"].to(runtime.device), src, dst)
            loss, parts = affinity_loss(aff, bg_pos, fg_pos, neg, mean=global_mean)
            values = mean_over_processes(
                {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}, ctx)
            for k in ("bg_count", "fg_count", "neg_count"):  # pairs of the global batch
                values[k] *= ctx.world_size
            if not math.isfinite(values["loss"]):
                terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
                raise BnrError(f"train_affinity: loss is not finite at epoch {epoch + 1}, "
                               f"step {step} ({terms})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            count += 1
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            if step % LOG_EVERY == 0:
                live.step = step
                for k in ("loss", "bg", "fg", "neg"):
                    live.log_metric(f"train/{k}", values[k])
                live.log_metric("train/lr", lr)
            bar.set_postfix(loss=f"{values['loss']:.4f}")
        means = {k: v / max(count, 1) for k, v in sums.items()}
        history.append({"epoch": epoch + 1, "seconds": round(time.time() - epoch_started, 1),
                        **means})
        live.step = step
        for k in ("loss", "bg", "fg", "neg"):
            live.log_metric(f"epoch/{k}", means.get(k, 0.0))
        live.log_metric("epoch/epoch", epoch + 1)
        if ctx.is_main:
            save_checkpoint(ckpt_path, {
                "model": cpu_state(model), "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1, "step": step, "history": history, "meta": meta,
            })
            print(f"epoch {epoch + 1}/{data.affinity_epochs} ({history[-1]['seconds']} s): "
                  + ", ".join(f"{k}={means[k]:.4f}" for k in ("loss", "bg", "fg", "neg")))
    live.end()

    if ctx.is_main:
        finish_run(model, meta, params, model_out, curves_out, run_dir)
    barrier(ctx)
    return {"epochs": data.affinity_epochs, "steps": step, "history": history,
            "train_images": len(dataset), "affinity_labels": label_stats,
            "label_seconds": label_seconds,
            "seconds_this_run": round(time.time() - started, 1),
            "train_seconds_this_run": round(time.time() - train_started, 1)}


# ----------------------------------------------------------------------------------------------
# Random walk


def padded_size(h: int, w: int, radius: int) -> tuple[int, int]:
    """(H', W'): the size rounded up to multiples of 8 (PSA), and at least the smallest size whose
    1/8 grid holds the radius pairs (radius x (2 radius - 1) nodes; 40 x 72 px for radius 5)."""
    hp, wp = h + (-h % STRIDE), w + (-w % STRIDE)
    return max(hp, radius * STRIDE), max(wp, (2 * radius - 1) * STRIDE)


@torch.no_grad()
def image_affinity(
    model: AffinityNet, image: np.ndarray, radius: int, *, runtime: Runtime = CPU
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AffinityNet on the normalised image zero-padded to :func:`padded_size` (PSA pads to a
    multiple of 8) -> aff (P,), src (P,), dst (P,) on the (H'/8) x (W'/8) grid.

    The features are computed on ``runtime``'s device under its autocast (``model`` already
    there); the affinities are float32 and, like src / dst, on that device.
    """
    x, _ = EvalTransform()(image, None)  # (3, H, W)
    h, w = x.shape[1:]
    hp, wp = padded_size(h, w, radius)
    x = F.pad(x, (0, wp - w, 0, hp - h))  # (3, H', W')
    with runtime.autocast():
        feats = model(runtime.to_device(x[None]))  # (1, 3, H', W') -> (1, C, H'/8, W'/8)
    aff, src, dst = feature_affinity(feats, radius)  # (1, P) float32
    return aff[0], src, dst


def random_walk_split(
    params: Params,
    model: AffinityNet,
    ids: Sequence[str],
    out_dir: Path,
    cam_dir: Path = Path("data/cams"),
    progress: bool = True,
    *,
    runtime: Runtime = CPU,
) -> dict:
    """Random-walk labels of ``ids`` into ``out_dir`` (atomic directory of palette PNGs).

    Uses the sparse walk (never an N x N matrix). An image with no foreground class is all
    background (kept and counted). Returns counts and timing. AffinityNet runs on
    ``runtime`` (``model`` already prepared for it); the walk itself runs on the CPU in float32.
    """
    cfg, root = params.random_walk, Path(params.data.root)
    model.eval()
    started, no_fg = time.time(), 0
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for img_id in tqdm(ids, desc="random_walk", disable=not progress):
            image = read_image(root / "JPEGImages" / f"{img_id}.jpg")
            classes, cams = checked_cams(cam_dir, img_id, image.shape[:2])
            if len(classes) == 0:
                no_fg += 1
                label = np.zeros(image.shape[:2], np.uint8)
            else:
                try:
                    aff, src, dst = image_affinity(model, image, cfg.radius, runtime=runtime)
                except BnrError as exc:
                    raise BnrError(f"{img_id}: {exc}") from None
                # random_walk_segmentation builds its score maps on the CPU, so the walk
                # cannot run on another device: affinities (P,) and pairs come back here
                aff, src, dst = aff.float().cpu(), src.cpu(), dst.cpu()
                h, w = image.shape[:2]
                hp, wp = padded_size(h, w, cfg.radius)
                if (hp, wp) != (h + (-h % STRIDE), w + (-w % STRIDE)):  # a very small image:
                    cams = np.pad(cams, ((0, 0), (0, hp - h), (0, wp - w)))  # CAMs to its grid
                label = random_walk_segmentation(
                    cams, [int(c) for c in classes], aff, src, dst, beta=cfg.beta,
                    logt=cfg.logt, bg_score=cfg.bg_score, method="sparse", stride=STRIDE,
                )[:h, :w]
            write_palette_png(tmp / f"{img_id}.png", label)
    return {"images": len(ids), "all_background": no_fg,
            "seconds": round(time.time() - started, 1)}


# ----------------------------------------------------------------------------------------------
# CRF


def _crf_one(payload: tuple) -> np.ndarray:
    """Worker: label dense CRF of one image's random-walk labels."""
    image_path, label_path, n_labels, kw = payload
    image = read_image(image_path)
    labels = read_label_png(label_path)
    if labels.shape != image.shape[:2]:
        raise BnrError(f"{label_path}: label size {labels.shape} differs from its image")
    if not (labels != 0).any():  # nothing but background: the CRF cannot change it
        return labels
    return dense_crf_labels(image, labels, n_labels, **kw)


def crf_split(
    params: Params,
    ids: Sequence[str],
    label_dir: Path,
    out_dir: Path,
    progress: bool = True,
    fn: Callable[[tuple], np.ndarray] = _crf_one,
) -> dict:
    """Dense-CRF the labels of ``label_dir`` into ``out_dir`` (atomic dir; ``crf.workers``).

    A failing or dying worker raises a BnrError naming the image; ``out_dir`` is then left as
    it was (no partial directory). ``fn`` is the per-image worker (tests inject failures).
    """
    root, n_labels = Path(params.data.root), len(class_names(params.dataset))
    kw = crf_kwargs(params.crf)
    for img_id in ids:  # fail before starting the pool
        if not (Path(label_dir) / f"{img_id}.png").is_file():
            raise BnrError(f"{Path(label_dir) / img_id}.png: random-walk label missing "
                           "(run the random_walk stage)")
    items = ((i, (root / "JPEGImages" / f"{i}.jpg", Path(label_dir) / f"{i}.png", n_labels, kw))
             for i in ids)
    started, no_fg = time.time(), 0
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for img_id, label in tqdm(crf_map(fn, items, crf_workers(params.crf)), total=len(ids),
                                  desc="crf", disable=not progress):
            no_fg += int(not (label != 0).any())
            write_palette_png(tmp / f"{img_id}.png", label)
    return {"images": len(ids), "all_background": no_fg,
            "seconds": round(time.time() - started, 1)}


# ----------------------------------------------------------------------------------------------
# Evaluation


def best_seed_threshold(path: Path = Path("metrics/seeds.json")) -> float:
    """The best background threshold recorded by eval_seeds."""
    path = Path(path)
    if not path.is_file():
        raise BnrError(f"{path}: not found (run the eval_seeds stage)")
    try:
        value = json.loads(path.read_text())["best_threshold"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BnrError(f"{path}: no best_threshold ({exc})") from None
    return float(value)


def _iter_eval(ids: Sequence[str], progress: bool) -> Iterator[str]:
    yield from tqdm(ids, desc="eval pseudo labels", disable=not progress)


def pseudo_label_confusions(
    params: Params,
    ids: Sequence[str],
    threshold: float,
    rw_dir: Path,
    crf_dir: Path,
    cam_dir: Path = Path("data/cams"),
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Accumulated (C, C) confusion matrices of seeds / random walk / CRF on ``ids``."""
    data, n = params.data, len(class_names(params.dataset))
    conf = {k: np.zeros((n, n), np.int64) for k in ("seeds", "random_walk", "crf")}
    for img_id in _iter_eval(ids, progress):
        gt = read_mask(Path(data.root) / data.gt_dir / f"{img_id}.png", n)
        classes, cams = checked_cams(cam_dir, img_id, gt.shape)
        preds = {"seeds": cams_to_seeds(cams, classes, threshold)}
        for name, folder in (("random_walk", rw_dir), ("crf", crf_dir)):
            path = Path(folder) / f"{img_id}.png"
            if not path.is_file():
                raise BnrError(f"{path}: label missing for evaluated image {img_id}")
            preds[name] = read_mask(path, n, gt.shape)
        for name, pred in preds.items():
            conf[name] += confusion_matrix(pred, gt, n)
    return conf


def evaluate_pseudo_labels(
    params: Params,
    rw_dir: Path = Path("data/rw_labels"),
    crf_dir: Path = Path("data/pseudo_labels"),
    cam_dir: Path = Path("data/cams"),
    seeds_json: Path = Path("metrics/seeds.json"),
    progress: bool = True,
) -> tuple[dict, Any]:
    """mIoU of the seeds (best eval_seeds threshold), random-walk and CRF labels on
    ``seed_eval_split`` against ``gt_dir``. Returns ``(metrics without protocol, table)``;
    the table has per-class IoU (%) columns ``seeds``, ``random_walk``, ``crf``."""
    import pandas as pd

    data = params.data
    names = class_names(params.dataset)
    ids = read_split(data.root, data.seed_eval_split)
    infer = set(read_split(data.root, data.infer_split))
    outside = [i for i in ids if i not in infer]
    if outside:
        raise BnrError(f"seed_eval_split {data.seed_eval_split!r} has {len(outside)} images "
                       f"outside infer_split {data.infer_split!r} (e.g. {outside[0]})")
    threshold = best_seed_threshold(seeds_json)
    conf = pseudo_label_confusions(params, ids, threshold, rw_dir, crf_dir, cam_dir, progress)
    out: dict[str, Any] = {"images": len(ids), "seed_threshold": threshold}
    table = pd.DataFrame({"class": [*names, "mIoU"]})
    for key, c in conf.items():
        iou = iou_per_class(c)
        out[f"miou_{key}"] = round(mean_iou(c) * 100, 3)
        table[key] = [*np.round(iou * 100, 2), round(mean_iou(c) * 100, 2)]
    total = conf["crf"]
    table["gt_pixels"] = [*total.sum(1), int(total.sum())]
    table["crf_pred_pixels"] = [*total.sum(0), int(total.sum())]
    out["per_class_iou"] = {
        key: {nm: None if np.isnan(v) else round(float(v) * 100, 3)
              for nm, v in zip(names, iou_per_class(c), strict=True)}
        for key, c in conf.items()
    }
    return out, table
