"""The segmenter (DeepLab-LargeFOV on ResNet-38d, or torchvision's DeepLabV3) as the stages
build and load it: its checkpoint meta, a fresh model, a trained one (strict load), through the
model registry (bnr/models/registry.py)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from bnr.config.params import Params
from bnr.data.classes import class_names
from bnr.models import deeplab  # noqa: F401 (registers its kind)
from bnr.models.registry import create_model, model_from_checkpoint
from bnr.weights.pretrained import stage_weights


def segmenter_meta(params: Params) -> dict:
    """What a segmenter checkpoint must agree on to be loaded (also enough to rebuild it)."""
    return {
        "kind": "segmenter",
        "arch": params.train_segmenter.arch,
        "preset": params.per_dataset.train_segmenter.backbone,
        "num_classes": len(class_names(params.dataset)),
        "dataset": params.dataset,
    }


def build_segmenter(params: Params, pretrained: bool = True) -> nn.Module:
    """A fresh segmenter for ``params`` (backbone from ``train_segmenter.pretrained`` when
    ``pretrained``)."""
    meta = segmenter_meta(params)
    weights = stage_weights(params, "train_segmenter") if pretrained else ""
    return create_model("segmenter", meta["preset"], num_classes=meta["num_classes"],
                        pretrained=weights, arch=meta["arch"],
                        bn_momentum=params.per_dataset.train_segmenter.bn_momentum)


def segmenter_from_checkpoint(path: Path, expected_meta: dict | None = None) -> nn.Module:
    """The trained segmenter of ``path`` in eval mode, rebuilt from its ``meta`` (strict)."""
    return model_from_checkpoint(path, expected_meta or {"kind": "segmenter"},
                                 "train_segmenter")[0]


def load_segmenter(params: Params, path: Path) -> nn.Module:
    """The trained segmenter of ``path``, checked against ``params``."""
    return segmenter_from_checkpoint(path, segmenter_meta(params))
