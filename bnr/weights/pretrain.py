"""The pretrain stage: classification pretraining on the generated world (its own "ImageNet").

``conformer_tiny`` and ``resnet38d_tiny`` learn the 50 classes (multi-label) of
``bnr.data.pretrain_world`` from images the generator never repeats, and are written in the
layouts of the real ImageNet files, so the CAM, affinity and segmenter stages load them through
exactly the strict key maps that load those files:

* the Conformer in the official layout (``Conformer_small_patch16.pth``: a flat state dict with
  the official names and both classifiers, ``conv_cls_head`` a Linear on the pooled CNN map and
  ``trans_cls_head`` a Linear on the normalised class token), read by
  :func:`bnr.models.conformer.load_pretrained` (heads dropped);
* the ResNet-38d in the converted ``.pth`` layout (PSA's key names, no BatchNorm counters,
  the classifier as ``linear1000.*``), read by :func:`bnr.models.resnet38.load_imagenet_weights`.

Training runs through the one training engine (:mod:`bnr.engine`): AdamW, linear warm-up then
cosine decay (``Loop.lr_at``), cross-entropy of each head against the image's classes (weight
1/n each; both heads' losses summed for the Conformer, as the official model sums its two).
Step ``s`` sees train images ``s*B .. s*B+B-1`` of the world (never repeated), image ``i``
flipped from its own seed ``sample_seed(seed, 0, i)``, so the run is deterministic from the
params. A period is one log interval (``log_every`` steps): its mean loss is one point of
``loss_curve``, and a resume checkpoint (a few MB) ends it, in ``runs/pretrain/<key>/``. A
network that finished keeps its weights and scores there (``done.pt``) until both have, so an
interruption during the ResNet does not retrain the Conformer. The held-out split is scored by
mean average precision over the classes and by top-1 on its single-object images.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from bnr.checkpoints import load_checkpoint, load_state_strict, save_checkpoint
from bnr.config.params import PretrainConfig
from bnr.data.pretrain_world import PRETRAIN_CLASSES, PretrainWorld, WorldSpec
from bnr.distributed import SINGLE, DistContext
from bnr.engine import Loop, cpu_state, fit, run_key, sample_seed, source_digest
from bnr.errors import BnrError
from bnr.io import atomic_path
from bnr.models.conformer import PRESETS as CONFORMER_PRESETS
from bnr.models.conformer import Conformer
from bnr.models.resnet38 import CLASSIFIER_PREFIX, ResNet38d, resnet38d, resnet38d_tiny
from bnr.runtime import CPU, Runtime, seed_torch

RESNET_PRESETS: dict[str, Callable[..., ResNet38d]] = {"resnet38d": resnet38d,
                                                       "resnet38d_tiny": resnet38d_tiny}
LR_PARAMS = {"conformer": "conformer_lr", "resnet38": "resnet_lr"}  # network -> its lr param


def world_spec(cfg: PretrainConfig) -> WorldSpec:
    return WorldSpec(image_size=cfg.image_size, max_objects=cfg.max_objects,
                     clutter=cfg.clutter, seed=cfg.world_seed)


# ----------------------------------------------------------------------------------------------
# The two classifiers, with the official heads; ``forward`` gives a list of logits per head


class ConformerClassifier(Conformer):
    """A Conformer whose CNN head is the official one: Linear(c3, K) on the pooled map."""

    def __init__(self, preset: str, num_classes: int) -> None:
        if preset not in CONFORMER_PRESETS:
            raise BnrError(f"pretrain.conformer_model: unknown preset {preset!r} "
                           f"(known: {', '.join(sorted(CONFORMER_PRESETS))})")
        super().__init__(CONFORMER_PRESETS[preset], num_classes=num_classes)
        self.conv_cls_head = nn.Linear(self.cfg.stage_channels[2], num_classes)
        nn.init.trunc_normal_(self.conv_cls_head.weight, std=0.02)
        nn.init.zeros_(self.conv_cls_head.bias)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        """(B, 3, H, W) -> [CNN logits (B, K), class-token logits (B, K)] (official heads)."""
        feats = self.forward_features(images)
        cnn = self.conv_cls_head(feats["cnn"].mean(dim=(2, 3)))  # (B, c3, h, w) -> (B, K)
        token = self.trans_cls_head(self.trans_norm(feats["tokens"][:, 0]))  # (B, D) -> (B, K)
        return [cnn, token]


class ResNetClassifier(nn.Module):
    """ResNet-38d (BatchNorms training) + global average pooling + ``linear1000`` (K classes)."""

    def __init__(self, preset: str, num_classes: int) -> None:
        super().__init__()
        if preset not in RESNET_PRESETS:
            raise BnrError(f"pretrain.resnet_model: unknown preset {preset!r} "
                           f"(known: {', '.join(sorted(RESNET_PRESETS))})")
        self.backbone = RESNET_PRESETS[preset](freeze_bn=False, frozen=())
        self.classifier = nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> [logits (B, K)]."""
        return [self.classifier(self.backbone(images).mean(dim=(2, 3)))]


# ----------------------------------------------------------------------------------------------
# Checkpoints in the real layouts


def conformer_official_state(model: Conformer) -> dict[str, torch.Tensor]:
    """The official-layout state dict (our names are the official ones; heads included)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def resnet38_converted_state(model: ResNetClassifier) -> dict[str, torch.Tensor]:
    """The converted-``.pth`` layout: PSA key names, no ``num_batches_tracked``,
    classifier as ``linear1000.weight`` / ``linear1000.bias``."""
    state = {k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()
             if not k.endswith(".num_batches_tracked")}
    state[f"{CLASSIFIER_PREFIX}.weight"] = model.classifier.weight.detach().cpu().clone()
    state[f"{CLASSIFIER_PREFIX}.bias"] = model.classifier.bias.detach().cpu().clone()
    return state


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """torch.save a flat state dict atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


# ----------------------------------------------------------------------------------------------
# Training and evaluation


def multilabel_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Sum over heads of the cross-entropy against the multi-hot target spread evenly over the
    image's classes (logits and labels (B, K)). Softmax competition between the 50 classes
    learns where 50 independent soft-margin terms sat at the label prior (measured)."""
    target = labels / labels.sum(1, keepdim=True).clamp(min=1)
    return sum(F.cross_entropy(x, target) for x in logits)  # type: ignore[return-value]


def lr_at(step: int, total: int, base: float, warmup_fraction: float) -> float:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 0."""
    warm = max(1, round(total * warmup_fraction))
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def step_batches(batch: int, seed: int, start: int, stop: int) -> list[list[tuple[int, int]]]:
    """The global batches of steps ``start .. stop - 1`` as ``(image index, flip seed)``: step
    ``s`` sees train images ``s*B .. s*B+B-1``, image ``i`` flipped from
    ``sample_seed(seed, 0, i)`` (each image is seen once)."""
    return [[(i, sample_seed(seed, 0, i)) for i in range(s * batch, (s + 1) * batch)]
            for s in range(start, stop)]


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; no weight decay on the model's ``no_weight_decay`` names nor on vectors."""
    no_decay = getattr(model, "no_weight_decay", lambda: set())()
    params = list(model.named_parameters())
    return torch.optim.AdamW(
        [{"params": [p for n, p in params if n not in no_decay and p.ndim > 1]},
         {"params": [p for n, p in params if n in no_decay or p.ndim <= 1],
          "weight_decay": 0.0}], lr=lr, weight_decay=weight_decay)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: scores and 0/1 targets (N,); NaN when the class never occurs."""
    positives = targets.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = targets[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / positives)


def classification_scores(scores: np.ndarray, targets: np.ndarray) -> dict:
    """mAP over classes (%), top-1 on single-label rows (%) and their counts; (N, K) arrays."""
    aps = [average_precision(scores[:, k], targets[:, k]) for k in range(targets.shape[1])]
    single = targets.sum(1) == 1
    top1 = (scores[single].argmax(1) == targets[single].argmax(1)).mean() if single.any() else 0
    return {"map": round(100 * float(np.nanmean(aps)), 2),
            "top1_single_object": round(100 * float(top1), 2),
            "images": int(len(targets)), "single_object_images": int(single.sum())}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, runtime: Runtime) -> dict:
    """Held-out scores; the Conformer's score is the sum of its two heads' logits."""
    model.eval()
    scores, targets = [], []
    for batch in loader:
        with runtime.autocast():
            logits = model(runtime.to_device(batch["image"]))
        scores.append(sum(x.float() for x in logits).cpu().numpy())
        targets.append(batch["labels"].numpy())
    model.train()
    return classification_scores(np.concatenate(scores), np.concatenate(targets))


def network_run_dir(run_root: Path, cfg: PretrainConfig, name: str, runtime: Runtime) -> Path:
    """``run_root/<key>``: the resume state of network ``name``, keyed by the params, the
    library source and the precision (only the identical run resumes it)."""
    return Path(run_root) / run_key(asdict(cfg), name, source_digest(), runtime.precision)


def pretrain_network(
    model: nn.Module, name: str, cfg: PretrainConfig, steps: int, lr: float, seed: int, *,
    runtime: Runtime = CPU, ctx: DistContext = SINGLE, run_root: Path = Path("runs/pretrain"),
    curves_out: Path | None = None, progress: bool = True,
    live_factory: Callable[..., Any] | None = None, stop_after_step: int | None = None,
) -> dict:
    """Train ``model`` (in place) for ``steps`` steps of ``cfg.batch_size`` world images through
    the engine (``seed``: its per-step dropout seeds); return the held-out scores, the loss
    curve (mean per log interval) and the seconds taken, or ``{"interrupted_at_step": n}``
    when ``stop_after_step`` ends the call early (an interruption: the next call resumes).
    A network that finished already (``done.pt`` of the same key) is loaded, not retrained."""
    meta = {"kind": "pretrain", "network": name}
    run_dir = network_run_dir(run_root, cfg, name, runtime)
    done = run_dir / "done.pt"
    if done.is_file():
        state = load_checkpoint(done, meta)
        load_state_strict(model, state["model"], done)
        return state["summary"]
    batch, every = cfg.batch_size, cfg.log_every
    loop = Loop(
        stage=f"pretrain {name}", seed=seed, meta=meta, protocol={}, run_dir=run_dir,
        num_periods=math.ceil(steps / every),
        period_batches=lambda p: step_batches(batch, cfg.seed, p * every,
                                              min((p + 1) * every, steps)),
        total_steps=steps, num_workers=cfg.num_workers, log_every=every,
        lr_at=lambda s: lr_at(s, steps, lr, cfg.warmup_fraction),
        period_name="block", hint=f"; lower pretrain.{LR_PARAMS.get(name, 'lr')}",
        live_params={"network": name, "seed": cfg.seed, "lr": lr, "steps": steps,
                     "batch_size": batch},
    )

    def step(net: nn.Module, data: dict) -> tuple[torch.Tensor, dict[str, float]]:
        images = runtime.to_device(data["image"])  # (B/N, 3, S, S)
        with runtime.autocast():
            logits = net(images)  # [(B/N, K) per head]
        return multilabel_loss([x.float() for x in logits], data["labels"].to(runtime.device)), {}

    out = fit(loop, model, lambda m: adamw(m, lr, cfg.weight_decay),
              PretrainWorld(world_spec(cfg), "train", steps * batch, flip=True), step,
              None, curves_out, runtime=runtime, ctx=ctx, progress=progress,
              live_factory=live_factory, stop_after_step=stop_after_step)
    if out.interrupted:
        return {"interrupted_at_step": out.steps}
    val = DataLoader(PretrainWorld(world_spec(cfg), "val", cfg.num_val), batch_size=64,
                     num_workers=runtime.loader_workers(cfg.num_workers))
    curve = [{"step": h["step"], "loss": round(h["loss"], 5)} for h in out.history]
    summary = {**evaluate(model, val, runtime), "steps": steps, "batch_size": batch,
               "train_images": steps * batch, "lr": lr,
               "train_seconds": round(sum(h["seconds"] for h in out.history), 1),
               "loss_curve": curve}
    if ctx.is_main:
        save_checkpoint(done, {"model": cpu_state(model), "meta": meta, "summary": summary})
    return summary


def run_pretrain(cfg: PretrainConfig, conformer_out: Path, resnet_out: Path,
                 runtime: Runtime = CPU, log: Callable[[str], None] = print, *,
                 ctx: DistContext = SINGLE, run_root: Path = Path("runs/pretrain"),
                 curves_out: Path | None = None, progress: bool = True,
                 live_factory: Callable[..., Any] | None = None,
                 stop_after_step: int | None = None) -> dict:
    """Pretrain both backbones and write their weights; return the metrics of both.

    Resume state in ``run_root/<key>/``; ``curves_out``: the dvclive curves of each network in
    ``curves_out/conformer`` and ``curves_out/resnet38`` (None: not kept). ``stop_after_step``
    counts the steps of both networks (the Conformer's first) and ends the call there as an
    interruption would, returning ``{"interrupted_at_step": n}``. Only the main process of a
    torchrun job (``ctx``) writes files.
    """
    num_classes = len(PRETRAIN_CLASSES)
    kw: dict[str, Any] = {"runtime": runtime, "ctx": ctx, "run_root": run_root,
                          "progress": progress, "live_factory": live_factory}
    networks: dict[str, dict] = {}
    done_steps = 0
    for name, preset, steps, lr, offset in (
            ("conformer", cfg.conformer_model, cfg.conformer_steps, cfg.conformer_lr, 0),
            ("resnet38", cfg.resnet_model, cfg.resnet_steps, cfg.resnet_lr, 1)):
        seed_torch(cfg.seed + offset)
        build = ConformerClassifier if name == "conformer" else ResNetClassifier
        model = build(preset, num_classes)
        log(f"pretrain {preset}: {steps} steps")
        stop = None if stop_after_step is None else stop_after_step - done_steps
        out = pretrain_network(
            model, name, cfg, steps, lr, cfg.seed + offset, **kw, stop_after_step=stop,
            curves_out=None if curves_out is None else Path(curves_out) / name)
        if "interrupted_at_step" in out:
            return {"interrupted_at_step": done_steps + out["interrupted_at_step"]}
        done_steps += steps
        networks[name] = {"model": model, "metrics": out}
    if ctx.is_main:
        save_weights(conformer_out, conformer_official_state(networks["conformer"]["model"]))
        save_weights(resnet_out, resnet38_converted_state(networks["resnet38"]["model"]))
        for name in networks:  # both written: the finished networks' records go
            shutil.rmtree(network_run_dir(run_root, cfg, name, runtime), ignore_errors=True)
    return {"classes": num_classes,
            "conformer": {"model": cfg.conformer_model, "layout": "official",
                          "file": str(conformer_out), **networks["conformer"]["metrics"]},
            "resnet38": {"model": cfg.resnet_model, "layout": "converted .pth",
                         "file": str(resnet_out), **networks["resnet38"]["metrics"]}}
