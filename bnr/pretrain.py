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

Training: AdamW, linear warm-up then cosine decay, cross-entropy of each head against the
image's classes (weight 1/n each; both heads' losses summed for the Conformer, as the official
model sums its two). Step ``s`` sees train
images ``s*B .. s*B+B-1``, each flipped from its own seed, so the run is deterministic from the
params. The held-out split is scored by mean average precision over the classes and by top-1 on
its single-object images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from bnr.config import PretrainConfig
from bnr.data.pretrain_world import PRETRAIN_CLASSES, PretrainWorld, WorldSpec
from bnr.distributed import SeededItems
from bnr.errors import BnrError
from bnr.io import atomic_path
from bnr.models.conformer import Conformer, create_conformer
from bnr.models.resnet38 import CLASSIFIER_PREFIX, ResNet38d, resnet38d, resnet38d_tiny
from bnr.runtime import CPU, Runtime

RESNET_PRESETS: dict[str, Callable[..., ResNet38d]] = {"resnet38d": resnet38d,
                                                       "resnet38d_tiny": resnet38d_tiny}
Logits = Callable[[nn.Module, torch.Tensor], list[torch.Tensor]]


def world_spec(cfg: PretrainConfig) -> WorldSpec:
    return WorldSpec(image_size=cfg.image_size, max_objects=cfg.max_objects,
                     clutter=cfg.clutter, seed=cfg.world_seed)


# ----------------------------------------------------------------------------------------------
# The two classifiers, with the official heads


def conformer_classifier(preset: str, num_classes: int) -> Conformer:
    """A Conformer whose CNN head is the official one: Linear(c3, K) on the pooled map."""
    model = create_conformer(preset, num_classes=num_classes)
    model.conv_cls_head = nn.Linear(model.cfg.stage_channels[2], num_classes)
    nn.init.trunc_normal_(model.conv_cls_head.weight, std=0.02)
    nn.init.zeros_(model.conv_cls_head.bias)
    return model


def conformer_logits(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """(B, 3, H, W) -> [CNN logits (B, K), class-token logits (B, K)] (official heads)."""
    feats = model.forward_features(images)
    cnn = model.conv_cls_head(feats["cnn"].mean(dim=(2, 3)))  # (B, c3, h, w) -> (B, K)
    token = model.trans_cls_head(model.trans_norm(feats["tokens"][:, 0]))  # (B, D) -> (B, K)
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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, K)."""
        return self.classifier(self.backbone(images).mean(dim=(2, 3)))


def resnet_logits(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    return [model(images)]


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


def flip_seed(seed: int, index: int) -> int:
    """The augmentation seed of train image ``index`` (each image is seen once); the same
    numbers as ``bnr.training.sample_seed(seed, 0, index)``, without importing the loops."""
    return ((seed * 1_000_003 + 17) * 31 + index * 1_000_033 + 5) % 2**63


def lr_at(step: int, total: int, base: float, warmup_fraction: float) -> float:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 0."""
    warm = max(1, round(total * warmup_fraction))
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train_step(model: nn.Module, logits_fn: Logits, batch: dict, optimizer: torch.optim.Optimizer,
               runtime: Runtime) -> float:
    """One optimisation step on ``batch`` (image (B, 3, S, S), labels (B, K)); returns the loss."""
    images = runtime.to_device(batch["image"])
    labels = batch["labels"].to(runtime.device)
    with runtime.autocast():
        logits = logits_fn(model, images)
    loss = multilabel_loss([x.float() for x in logits], labels)
    if not math.isfinite(loss.item()):
        raise BnrError(f"pretrain: loss is not finite ({loss.item()})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.item())


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
def evaluate(model: nn.Module, logits_fn: Logits, loader: DataLoader, runtime: Runtime) -> dict:
    """Held-out scores; the Conformer's score is the sum of its two heads' logits."""
    model.eval()
    scores, targets = [], []
    for batch in loader:
        with runtime.autocast():
            logits = logits_fn(model, runtime.to_device(batch["image"]))
        scores.append(sum(x.float() for x in logits).cpu().numpy())
        targets.append(batch["labels"].numpy())
    model.train()
    return classification_scores(np.concatenate(scores), np.concatenate(targets))


def pretrain_network(model: nn.Module, logits_fn: Logits, cfg: PretrainConfig, steps: int,
                     lr: float, runtime: Runtime = CPU, log: Callable[[str], None] = print
                     ) -> dict:
    """Train ``model`` for ``steps`` steps of ``cfg.batch_size`` world images; return the
    held-out scores, the loss curve (mean per log interval) and the seconds taken."""
    spec = world_spec(cfg)
    batch = cfg.batch_size
    train = SeededItems(PretrainWorld(spec, "train", steps * batch, flip=True))
    batches = [[(i, flip_seed(cfg.seed, i)) for i in range(s * batch, (s + 1) * batch)]
               for s in range(steps)]
    workers = runtime.loader_workers(cfg.num_workers)
    loader = DataLoader(train, batch_sampler=batches, num_workers=workers,
                        pin_memory=runtime.pin_memory)
    val = DataLoader(PretrainWorld(spec, "val", cfg.num_val), batch_size=64,
                     num_workers=workers)
    model = runtime.prepare_model(model)
    no_decay = getattr(model, "no_weight_decay", lambda: set())()
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in model.named_parameters() if n not in no_decay and p.ndim > 1]},
         {"params": [p for n, p in model.named_parameters() if n in no_decay or p.ndim <= 1],
          "weight_decay": 0.0}], lr=lr, weight_decay=cfg.weight_decay)
    model.train()
    curve, window, started = [], [], time.time()
    for step, data in enumerate(loader):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, cfg.warmup_fraction)
        window.append(train_step(model, logits_fn, data, optimizer, runtime))
        if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
            curve.append({"step": step + 1, "loss": round(float(np.mean(window)), 5)})
            window = []
            log(f"step {step + 1}/{steps} loss {curve[-1]['loss']:.4f} "
                f"({time.time() - started:.0f} s)")
    train_seconds = round(time.time() - started, 1)
    scores = evaluate(model, logits_fn, val, runtime)
    return {**scores, "steps": steps, "batch_size": batch, "train_images": steps * batch,
            "lr": lr, "train_seconds": train_seconds, "loss_curve": curve}


def run_pretrain(cfg: PretrainConfig, conformer_out: Path, resnet_out: Path,
                 runtime: Runtime = CPU, log: Callable[[str], None] = print) -> dict:
    """Pretrain both backbones and write their weights; return the metrics of both."""
    num_classes = len(PRETRAIN_CLASSES)
    torch.manual_seed(cfg.seed)
    conformer = conformer_classifier(cfg.conformer_model, num_classes)
    log(f"pretrain {cfg.conformer_model}: {cfg.conformer_steps} steps")
    conformer_metrics = pretrain_network(conformer, conformer_logits, cfg, cfg.conformer_steps,
                                         cfg.conformer_lr, runtime, log)
    save_weights(conformer_out, conformer_official_state(conformer))
    torch.manual_seed(cfg.seed + 1)
    resnet = ResNetClassifier(cfg.resnet_model, num_classes)
    log(f"pretrain {cfg.resnet_model}: {cfg.resnet_steps} steps")
    resnet_metrics = pretrain_network(resnet, resnet_logits, cfg, cfg.resnet_steps,
                                      cfg.resnet_lr, runtime, log)
    save_weights(resnet_out, resnet38_converted_state(resnet))
    return {"classes": num_classes,
            "conformer": {"model": cfg.conformer_model, "layout": "official",
                          "file": str(conformer_out), **conformer_metrics},
            "resnet38": {"model": cfg.resnet_model, "layout": "converted .pth",
                         "file": str(resnet_out), **resnet_metrics}}
