"""A lower bound on the memory a stage's settings imply, checked against the machine before any
work (``bnr.pipeline.stage.stage_main``): a crop, a scale or a sweep step whose cost explodes is one
line naming the key and the estimate, not "can't allocate 68.7 GB" after minutes of work.

The estimates count only the largest tensors whose size follows from the params alone (the
attention maps of the Conformer, the first full-resolution feature map of ResNet-38, the
threshold sweep's confusion matrices), so a refusal is certain to be right; a setting that
passes may still need more than the estimate.
"""

from __future__ import annotations

import os
from typing import Any

from bnr.data.classes import class_names
from bnr.errors import BnrError

# (heads, transformer blocks, patch size) of each Conformer preset (bnr.models.conformer.PRESETS;
# a test keeps them equal). Every stage runs this check, so importing the models here would put
# conformer.py in every stage's dvc.yaml deps.
CONFORMER_ATTENTION: dict[str, tuple[int, int, int]] = {"conformer_s": (6, 12, 16),
                                                        "conformer_tiny": (2, 3, 8)}
RESNET38_STEM_CHANNELS = 64  # ResNet-38d's first convolution, at the input resolution
GB = 1e9
ESTIMATED = ("train_cam", "infer_seeds", "train_affinity", "train_segmenter", "eval_seeds",
             "pretrain")


def machine_memory(device: str = "cpu") -> tuple[int, str]:
    """(bytes, what) of the memory the stage's tensors live in: the GPU's on CUDA, else this
    machine's physical memory (also for ``cuda`` without one: bnr.runtime names that)."""
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory, "the GPU's memory"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"


def resolved(cfg: Any) -> tuple[str, int]:
    """(device, bytes per activation) of ``cfg.runtime`` as bnr.runtime resolves ``auto``."""
    rt = cfg.runtime
    device = rt.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = rt.precision
    if precision == "auto":
        precision = "bfloat16" if device == "cuda" else "float32"
    return device, 4 if precision == "float32" else 2


def _attention(model: str, side: int, images: int, blocks_kept: bool, size: int) -> float:
    """Bytes of the softmax attention maps of ``images`` inputs of ``side`` px (all blocks'
    when ``blocks_kept``, as training keeps them for the backward pass)."""
    if model not in CONFORMER_ATTENTION:
        return 0.0
    heads, depth, patch = CONFORMER_ATTENTION[model]
    tokens = (side // patch) ** 2 + 1
    return float(images) * heads * (depth if blocks_kept else 1) * tokens**2 * size


def estimates(cfg: Any, stage: str) -> list[tuple[str, float, str]]:
    """``(key, bytes, what)`` lower bounds of ``stage``'s largest tensors under ``cfg``."""
    out: list[tuple[str, float, str]] = []
    if stage not in ESTIMATED:  # (reads no key: the stage may not declare them)
        return out
    size = resolved(cfg)[1] if stage != "eval_seeds" else 8
    if stage == "pretrain":  # (declares no dataset key)
        pre = cfg.pretrain
        return [(f"pretrain.batch_size={pre.batch_size}",
                 max(_attention(pre.conformer_model, pre.image_size, pre.batch_size, True, size),
                     float(pre.batch_size) * RESNET38_STEM_CHANNELS * pre.image_size**2 * size),
                 f"attention / first feature maps of {pre.image_size} px images")]
    name = f"datasets.{cfg.dataset}"
    if stage == "train_cam":
        cam = cfg.per_dataset.train_cam
        out.append((f"{name}.train_cam.crop_size={cam.crop_size}",
                    _attention(cam.model, cam.crop_size, cam.batch_size, True, size),
                    f"attention maps of batch_size {cam.batch_size}"))
    elif stage == "infer_seeds" and cfg.infer_seeds.resize == "square":  # side x side inputs
        side, model = max(cfg.per_dataset.infer_seeds.scales), cfg.per_dataset.train_cam.model
        passes = 2 if cfg.infer_seeds.flip and cfg.infer_seeds.batch_passes else 1
        out.append((f"{name}.infer_seeds.scales={side}",
                    _attention(model, side, passes, False, size), "attention maps of one pass"))
    elif stage in ("train_affinity", "train_segmenter"):
        sizes = getattr(cfg.per_dataset, stage)
        out.append((f"{name}.{stage}.crop={sizes.crop}",
                    float(sizes.batch_size) * RESNET38_STEM_CHANNELS * sizes.crop**2 * size,
                    f"the first feature map of batch_size {sizes.batch_size}"))
    elif stage == "eval_seeds":
        key, sweep = _sweep(cfg)
        if sweep is not None:
            steps = (sweep.threshold_stop - sweep.threshold_start) / sweep.threshold_step + 1
            classes = len(class_names(cfg.dataset))
            out.append((f"{key}.threshold_step={sweep.threshold_step:g}",
                        steps * classes**2 * 8 * 3,
                        f"{steps:.3g} sweep steps' confusion matrices"))
    return out


def _sweep(cfg: Any) -> tuple[str, Any]:
    """(key, block) of the threshold sweep: ``datasets.<d>.eval_seeds`` where the dataset
    block has one, else ``eval_seeds``; (key, None) when neither has a step."""
    per_dataset = getattr(cfg.per_dataset, "eval_seeds", None)
    if per_dataset is not None and hasattr(per_dataset, "threshold_step"):
        return f"datasets.{cfg.dataset}.eval_seeds", per_dataset
    block = getattr(cfg, "eval_seeds", None)
    return "eval_seeds", block if hasattr(block, "threshold_step") else None


def check_memory(cfg: Any, stage: str) -> None:
    """Refuse, in one line naming the key and the estimate, a setting of ``stage`` whose lower
    bound exceeds the memory it would run in."""
    found = [e for e in estimates(cfg, stage) if e[1] > 0]
    if not found:
        return
    device = resolved(cfg)[0] if stage != "eval_seeds" else "cpu"
    budget, where = machine_memory(device)
    for key, need, what in found:
        if need > budget:
            raise BnrError(f"params.yaml: {key} needs at least {need / GB:.1f} GB ({what}), "
                           f"more than the {budget / GB:.1f} GB of {where}")
