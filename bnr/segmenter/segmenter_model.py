"""The segmenter (DeepLab-LargeFOV on ResNet-38d, or torchvision's DeepLabV3) as the stages
build and load it: its checkpoint meta, a fresh model, a trained one (strict load), through the
model registry (bnr/models/registry.py)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from bnr.data.classes import class_names
from bnr.models import deeplab  # noqa: F401 (registers its kind)
from bnr.models.registry import create_model, model_from_checkpoint


def segmenter_meta(arch: str, preset: str, dataset: str) -> dict:
    """What a segmenter checkpoint must agree on to be loaded (also enough to rebuild it):
    ``arch`` (``train_segmenter.arch``), the backbone ``preset``
    (``datasets.<d>.train_segmenter.backbone``) and the ``dataset`` that names the classes."""
    return {
        "kind": "segmenter",
        "arch": arch,
        "preset": preset,
        "num_classes": len(class_names(dataset)),
        "dataset": dataset,
    }


def build_segmenter(arch: str, preset: str, dataset: str, bn_momentum: float,
                    weights: str = "", classifier_init: str = "kaiming") -> nn.Module:
    """A fresh segmenter (:func:`segmenter_meta`'s arguments; head BatchNorm momentum
    ``bn_momentum``; LargeFOV classifier init ``kaiming`` | ``normal``), its backbone from the
    ``weights`` file ("" = from scratch)."""
    meta = segmenter_meta(arch, preset, dataset)
    extra = {"classifier_init": classifier_init} if arch == "largefov" else {}
    return create_model("segmenter", meta["preset"], num_classes=meta["num_classes"],
                        pretrained=weights, arch=meta["arch"], bn_momentum=bn_momentum, **extra)


def segmenter_from_checkpoint(path: Path, expected_meta: dict | None = None) -> nn.Module:
    """The trained segmenter of ``path`` in eval mode, rebuilt from its ``meta`` (strict)."""
    return model_from_checkpoint(path, expected_meta or {"kind": "segmenter"},
                                 "train_segmenter")[0]


def load_segmenter(path: Path, arch: str, preset: str, dataset: str) -> nn.Module:
    """The trained segmenter of ``path``, checked against :func:`segmenter_meta`'s arguments."""
    return segmenter_from_checkpoint(path, segmenter_meta(arch, preset, dataset))
