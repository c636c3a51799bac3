"""AffinityNet (PSA) on ResNet-38d as the stages build and load it: checkpoint meta, a fresh
model, a trained one (strict load), through the model registry (bnr/models/registry.py)."""

from __future__ import annotations

from pathlib import Path

from bnr.models.registry import create_model, model_from_checkpoint
from bnr.models.resnet38 import AffinityNet  # (importing it registers "affinity")

STRIDE = 8  # AffinityNet output stride


def affinity_model_meta(preset: str, dataset: str) -> dict:
    """What an affinity checkpoint must agree on to be loaded: the ResNet-38d ``preset``
    (``datasets.<d>.train_affinity.model``) and the ``dataset``."""
    return {"kind": "affinity", "preset": preset, "dataset": dataset}


def build_affinity_model(preset: str, pretrained: str = "") -> AffinityNet:
    """A fresh AffinityNet on ResNet-38d ``preset`` (ImageNet weights if ``pretrained``)."""
    return create_model("affinity", preset, pretrained=pretrained)


def load_affinity_model(path: Path, preset: str, dataset: str) -> AffinityNet:
    """The trained AffinityNet of ``path`` (strict, meta-checked); one line if it is missing."""
    return model_from_checkpoint(path, affinity_model_meta(preset, dataset), "train_affinity")[0]
