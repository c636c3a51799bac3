"""The last step of the paper's pipeline: a fully supervised segmenter on the pseudo labels.

* :func:`train_segmenter`: DeepLab (``train_segmenter.arch``) trained on the CRF pseudo labels
  of ``infer_split`` (``data/pseudo_labels/<id>.png``): random rescale by a factor in
  ``segmenter_resize_scale``, horizontal flip, ImageNet normalisation, random crop
  ``segmenter_crop`` (image padding 0, label padding 255 = ignored), cross-entropy on the logits
  upsampled to the crop, poly SGD. Learning-rate groups as DeepLab's Caffe prototxt (and PSA):
  backbone weights 1x, backbone biases 2x, head weights 10x, head biases 20x
  (:func:`bnr.models.resnet38.param_groups`; the head is ``model.new_layers``); biases and
  BatchNorm shifts have no weight decay.
* Resume: a checkpoint ``run_root/<key>/last.pt`` every ``checkpoint_every`` iterations (key:
  params, ids, pseudo-label bytes, library source). The batch of iteration ``it`` and its
  augmentation depend only on ``(seed, it)`` (an epoch permutation from ``(seed, epoch)``, one
  torch seed per sample, one per iteration for dropout), so a resumed run ends with the same
  weights as an uninterrupted one (on CPU).
* :func:`multiscale_predict`: softmax probabilities averaged over scales and flips.
* :func:`evaluate_split`: confusion matrix of ``val_split`` against ``gt_dir`` (optional label
  dense CRF), prediction PNGs in the VOC palette.
* :func:`write_server_archive`: PASCAL VOC evaluation-server tar
  (``results/VOC2012/Segmentation/comp6_test_cls/<id>.png``).
"""

from __future__ import annotations

import io
import math
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from bnr.config import Params
from bnr.data.classes import class_names
from bnr.data.transforms import EvalTransform, TrainTransform
from bnr.data.voc import IGNORE_INDEX, read_mask, read_split
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
from bnr.metrics import confusion_matrix
from bnr.models.deeplab import create_segmenter
from bnr.postprocessing.crf import dense_crf_labels
from bnr.pretrained import pretrained_path
from bnr.psa import crf_kwargs, files_digest, write_palette_png
from bnr.runtime import CPU, Runtime
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

CHECKPOINT_EVERY = 100  # iterations between resume checkpoints
SERVER_DIR = "results/VOC2012/Segmentation/comp6_test_cls"  # PASCAL VOC server layout


# ----------------------------------------------------------------------------------------------
# Model


def segmenter_meta(params: Params) -> dict:
    """What a segmenter checkpoint must agree on to be loaded (also enough to rebuild it)."""
    return {
        "kind": "segmenter",
        "arch": params.train_segmenter.arch,
        "preset": params.data.segmenter_backbone,
        "num_classes": len(class_names(params.dataset)),
        "dataset": params.dataset,
    }


def build_segmenter(params: Params, pretrained: bool = True) -> nn.Module:
    """A fresh segmenter for ``params`` (ImageNet backbone if train_segmenter.pretrained)."""
    meta = segmenter_meta(params)
    weights = (pretrained_path(params.train_segmenter.pretrained, params.dataset, "resnet38")
               if pretrained else "")
    return create_segmenter(meta["arch"], meta["preset"], meta["num_classes"], weights)


def segmenter_from_checkpoint(path: Path, expected_meta: dict | None = None) -> nn.Module:
    """The trained segmenter of ``path`` in eval mode, rebuilt from its ``meta`` (strict)."""
    path = Path(path)
    if not path.is_file():
        raise BnrError(f"{path}: segmenter checkpoint not found (run the train_segmenter stage)")
    state = load_checkpoint(path, expected_meta or {"kind": "segmenter"})
    meta = state["meta"]
    model = create_segmenter(meta["arch"], meta["preset"], int(meta["num_classes"]))
    load_state_strict(model, state["model"], path)
    model.eval()
    return model


def load_segmenter(params: Params, path: Path = Path("models/segmenter.pt")) -> nn.Module:
    """The trained segmenter of ``path``, checked against ``params``."""
    return segmenter_from_checkpoint(path, segmenter_meta(params))


# ----------------------------------------------------------------------------------------------
# Training data


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

    Iterations run through :func:`bnr.training.epoch_batches` epoch after epoch (an epoch has
    ``n // batch`` batches, or one batch of all ``n`` when ``n < batch``).
    """
    per_epoch = max(1, n // batch)
    epoch, batches = -1, []
    for it in range(start, stop):
        e, pos = divmod(it, per_epoch)
        if e != epoch:
            epoch, batches = e, epoch_batches(n, batch, seed, e)
        yield batches[pos]


# ----------------------------------------------------------------------------------------------
# Training


def poly_lr(base: float, it: int, max_it: int, power: float = 0.9) -> float:
    """Poly schedule: ``base * (1 - it / max_it) ** power`` (0 from ``max_it`` on)."""
    return base * (1 - it / max_it) ** power if it < max_it else 0.0


def segmentation_loss(
    logits: torch.Tensor, label: torch.Tensor, ctx: DistContext = SINGLE
) -> torch.Tensor:
    """logits (B, S, h, w) upsampled bilinearly to label (B, H, W); cross-entropy averaged over
    the labelled pixels (255 ignored) of the whole global batch (all processes of ``ctx``).
    A batch with no labelled pixel gives 0 (not NaN)."""
    up = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(up, label, ignore_index=IGNORE_INDEX, reduction="sum")
    labelled = (label != IGNORE_INDEX).sum().to(total.dtype)
    return ddp_mean(total, labelled, ctx, min_count=1.0)


def train_segmenter(
    params: Params,
    model_out: Path,
    curves_out: Path,
    run_root: Path = Path("runs/train_segmenter"),
    stop_after_iteration: int | None = None,
    progress: bool = True,
    live_factory: Callable[..., Any] | None = None,
    label_dir: Path = Path("data/pseudo_labels"),
    checkpoint_every: int = CHECKPOINT_EVERY,
    runtime: Runtime = CPU,
    ctx: DistContext = SINGLE,
) -> dict:
    """Train the segmenter on the pseudo labels of ``infer_split``; write ``model_out`` and the
    dvclive curves (``curves_out``: train/loss, train/lr per ``log_every`` iterations).

    ``stop_after_iteration`` ends the call once that many iterations are done, as an
    interruption would (progress after the last checkpoint is lost and redone on resume).
    ``runtime`` / ``ctx``: device, precision and torchrun place (only the main process writes).
    Returns a summary (iterations, timings, final mean loss).
    """
    data, cfg = params.data, params.train_segmenter
    root = Path(data.root)
    if not root.is_dir():
        raise BnrError(f"{root}: dataset root not found (run the download stage)")
    ids = read_split(root, data.infer_split)
    label_paths = check_pseudo_labels(label_dir, ids)
    meta = segmenter_meta(params)
    key = run_key(params.protocol(), asdict(cfg), ids, files_digest(label_paths),
                  source_digest(), runtime.precision)
    run_dir = Path(run_root) / key
    ckpt_path = run_dir / "last.pt"
    dataset = PseudoLabelDataset(root, ids, label_dir, data.segmenter_crop,
                                 data.segmenter_resize_scale)

    torch.manual_seed(params.seed)
    model = build_segmenter(params)
    max_it = data.segmenter_iterations
    state = resume_state(ckpt_path, meta, model, "train_segmenter", ctx)
    start, history = (0, []) if state is None else (int(state["iteration"]),
                                                     list(state["history"]))
    model, optimizer, net = place_for_training(
        model, lambda m: poly_sgd(m, data.segmenter_lr, cfg.momentum, cfg.weight_decay),
        state, runtime, ctx)

    live = open_live(run_dir, start > 0, live_factory, ctx)
    if start == 0:
        live.log_params({"seed": params.seed, "arch": cfg.arch, "backbone": meta["preset"],
                         "lr": data.segmenter_lr, "crop": data.segmenter_crop,
                         "batch_size": data.segmenter_batch_size, "iterations": max_it})
    batches = list(iteration_batches(len(dataset), data.segmenter_batch_size, params.seed,
                                     start, max_it))
    loader = shard_loader(SeededItems(dataset), batches, ctx, runtime, cfg.num_workers)
    started = time.time()
    net.train()
    window: list[float] = []
    bar = tqdm(loader, total=max_it, initial=start, desc="train_segmenter",
               disable=not (progress and ctx.is_main))
    it = start
    for item in bar:
        if stop_after_iteration is not None and it >= stop_after_iteration:
            live.end()
            return {"interrupted_at_iteration": it}
        lr = poly_lr(data.segmenter_lr, it, max_it, cfg.poly_power)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        torch.manual_seed(epoch_seed(params.seed, it) + ctx.rank)  # dropout of this iteration
        with runtime.autocast():
            logits = net(runtime.to_device(item["image"]))  # (B/N, S, h/8, w/8)
        loss = segmentation_loss(logits.float(), item["label"].to(runtime.device), ctx)
        value = mean_over_processes({"loss": float(loss.detach())}, ctx)["loss"]
        if not math.isfinite(value):
            raise BnrError(f"train_segmenter: loss is not finite at iteration {it + 1} "
                           f"(loss={value}, lr={lr:.4g}); lower segmenter_lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        it += 1
        window.append(value)
        if it % cfg.log_every == 0 or it == max_it:
            mean = sum(window) / len(window)
            history.append({"iteration": it, "loss": mean, "lr": lr})
            window = []
            live.step = it
            live.log_metric("train/loss", mean)
            live.log_metric("train/lr", lr)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
        if it % checkpoint_every == 0 and it < max_it and ctx.is_main:
            save_checkpoint(ckpt_path, {
                "model": cpu_state(model), "optimizer": optimizer.state_dict(),
                "iteration": it, "history": history, "meta": meta,
            })
    bar.close()
    live.end()
    if ctx.is_main:
        finish_run(model, meta, params, model_out, curves_out, run_dir)
    barrier(ctx)
    seconds = round(time.time() - started, 1)
    return {"iterations": max_it, "resumed_from": start, "history": history,
            "train_images": len(dataset), "seconds_this_run": seconds,
            "seconds_per_iteration": round(seconds / max(1, max_it - start), 4),
            "final_loss": history[-1]["loss"] if history else None}


# ----------------------------------------------------------------------------------------------
# Prediction


@torch.no_grad()
def multiscale_predict(
    model: nn.Module,
    image: torch.Tensor,
    scales: Sequence[float],
    flip: bool = True,
    *,
    runtime: Runtime = CPU,
) -> torch.Tensor:
    """Class probabilities of one normalised image (3, H, W) -> (S, H, W).

    For each scale the image is resized bilinearly to (round(H s), round(W s)) (at least 8 px),
    run with its horizontal flip in one batch, the logits upsampled bilinearly to (H, W) and
    softmaxed, the flipped pass un-flipped; the probabilities of all passes are averaged.

    ``runtime``: the network runs on its device under its autocast (``model`` already there);
    upsampling, softmax and the average are float32; the result is a CPU float32 tensor.
    """
    h, w = image.shape[-2:]
    image = runtime.to_device(image)  # resized on the device: one upload per image
    total, passes = None, 0
    for s in scales:
        size = (max(8, round(h * s)), max(8, round(w * s)))
        x = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
        batch = torch.cat([x, x.flip(-1)]) if flip else x  # (P, 3, h', w')
        with runtime.autocast():
            logits = model(runtime.to_device(batch))  # (P, S, h'/8, w'/8)
        logits = logits.float()  # softmax and the average in float32 whatever the precision
        probs = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        probs = probs.softmax(1)  # (P, S, H, W)
        if flip:
            probs = torch.stack([probs[0], probs[1].flip(-1)])
        summed = probs.sum(0)  # (S, H, W)
        total = summed if total is None else total + summed
        passes += probs.shape[0]
    assert total is not None
    return (total / passes).cpu()  # argmax / CRF / callers work on the CPU


def predict_labels(
    model: nn.Module,
    image: np.ndarray,
    scales: Sequence[float],
    flip: bool,
    crf: dict | None = None,
    *,
    runtime: Runtime = CPU,
) -> np.ndarray:
    """(H, W, 3) uint8 image -> (H, W) uint8 labels (arg-max; label dense CRF if ``crf`` holds
    :func:`dense_crf_labels` keyword arguments). The network runs on ``runtime``."""
    x, _ = EvalTransform()(image, None)  # (3, H, W)
    probs = multiscale_predict(model, x, scales, flip, runtime=runtime)  # (S, H, W) CPU float32
    label = probs.argmax(0).numpy().astype(np.uint8)
    if crf is not None and (label != 0).any():
        label = dense_crf_labels(image, label, probs.shape[0], **crf)
    return label


def evaluate_split(
    params: Params,
    model: nn.Module,
    pred_dir: Path | None = Path("data/predictions"),
    ids: Sequence[str] | None = None,
    progress: bool = True,
    *,
    runtime: Runtime = CPU,
) -> tuple[np.ndarray, dict]:
    """Accumulated (S, S) confusion of ``val_split`` (or ``ids``) against ``gt_dir``.

    Scales ``eval_scales``, flip ``evaluate.flip``, label CRF (``crf`` block) when
    ``evaluate.crf``. Predictions are written to ``pred_dir`` (atomic directory of VOC palette
    PNGs; None = not written). The network runs on ``runtime`` (``model`` already prepared
    for it). Returns ``(confusion, stats)``.
    """
    data = params.data
    names = class_names(params.dataset)
    root = Path(data.root)
    ids = list(ids) if ids is not None else read_split(root, data.val_split)
    crf = crf_kwargs(params.crf) if params.evaluate.crf else None
    conf = np.zeros((len(names), len(names)), np.int64)
    model.eval()
    started = time.time()

    def run(out: Path | None) -> None:
        nonlocal conf
        for img_id in tqdm(ids, desc="evaluate", disable=not progress):
            image = read_image(root / "JPEGImages" / f"{img_id}.jpg")
            gt = read_mask(root / data.gt_dir / f"{img_id}.png", len(names), image.shape[:2])
            label = predict_labels(model, image, data.eval_scales, params.evaluate.flip, crf,
                                   runtime=runtime)
            conf += confusion_matrix(label, gt, len(names))
            if out is not None:
                write_palette_png(out / f"{img_id}.png", label)

    if pred_dir is None:
        run(None)
    else:
        with atomic_path(pred_dir) as tmp:
            tmp.mkdir()
            run(tmp)
    return conf, {"images": len(ids), "seconds": round(time.time() - started, 1)}


def _png_bytes(label: np.ndarray) -> bytes:
    im = Image.fromarray(np.asarray(label, np.uint8), mode="P")
    im.putpalette(voc_palette())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_label_tar(out: Path, labels: Iterable[tuple[str, np.ndarray]],
                    folder: str = SERVER_DIR) -> int:
    """Write ``(id, (H, W) labels)`` pairs as ``<folder>/<id>.png`` palette PNGs into the tar
    ``out`` (atomically; none given = an empty archive). Returns the number of files."""
    count = 0
    with atomic_path(out) as tmp, tarfile.open(tmp, "w") as tar:
        for img_id, label in labels:
            blob = _png_bytes(label)
            info = tarfile.TarInfo(f"{folder}/{img_id}.png")
            info.size, info.mtime, info.mode = len(blob), 0, 0o644
            tar.addfile(info, io.BytesIO(blob))
            count += 1
    return count


def write_server_archive(
    params: Params,
    model: nn.Module,
    out: Path = Path("data/server_archive.tar"),
    progress: bool = True,
    *,
    runtime: Runtime = CPU,
) -> dict:
    """PASCAL VOC evaluation-server archive of ``test_split`` predictions (voc2012 only).

    Layout: ``results/VOC2012/Segmentation/comp6_test_cls/<id>.png`` (comp6: trained with
    data other than VOC segmentation labels). Same scales / flip / CRF as the evaluation. When
    not configured (another dataset, or ``test_split`` empty) an empty tar is written so the
    stage output always exists. The network runs on ``runtime``. Returns
    ``{"images": n, "archive": path, "note": ...}``.
    """
    data = params.data
    if params.dataset != "voc2012" or not data.test_split:
        write_label_tar(out, [])
        why = ("test_split is empty" if not data.test_split
               else f"the server layout is VOC2012's, dataset is {params.dataset}")
        return {"images": 0, "archive": str(out), "note": f"no server predictions ({why})"}
    root = Path(data.root)
    ids = read_split(root, data.test_split)
    crf = crf_kwargs(params.crf) if params.evaluate.crf else None
    model.eval()

    def labels() -> Iterator[tuple[str, np.ndarray]]:
        for img_id in tqdm(ids, desc=f"predict {data.test_split}", disable=not progress):
            image = read_image(root / "JPEGImages" / f"{img_id}.jpg")
            yield img_id, predict_labels(model, image, data.eval_scales, params.evaluate.flip,
                                         crf, runtime=runtime)

    n = write_label_tar(out, labels())
    return {"images": n, "archive": str(out), "note": f"{SERVER_DIR}/<id>.png for {n} images"}
