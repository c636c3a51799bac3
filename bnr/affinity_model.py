"""AffinityNet (PSA) on ResNet-38d as the stages build and load it: checkpoint meta, a fresh
model, a trained one (strict load), through the model registry (bnr/models/registry.py)."""

from __future__ import annotations

from pathlib import Path

from bnr.config import Params
from bnr.errors import BnrError
from bnr.models.registry import create_model, model_from_checkpoint
from bnr.models.resnet38 import AffinityNet
from bnr.pretrained import pretrained_path  # (importing it registers "affinity")

STRIDE = 8  # AffinityNet output stride


def affinity_model_meta(params: Params) -> dict:
    """What an affinity checkpoint must agree on to be loaded."""
    return {"kind": "affinity", "preset": params.per_dataset.train_affinity.model,
            "dataset": params.dataset}


def affinity_weights(params: Params) -> str:
    """The file ``train_affinity.pretrained`` means for the dataset ("" = from scratch)."""
    return pretrained_path(params.train_affinity.pretrained, params.dataset, "resnet38")


def build_affinity_model(preset: str, pretrained: str = "") -> AffinityNet:
    """A fresh AffinityNet on ResNet-38d ``preset`` (ImageNet weights if ``pretrained``)."""
    return create_model("affinity", preset, pretrained=pretrained)


def load_affinity_model(params: Params, path: Path) -> AffinityNet:
    """The trained AffinityNet of ``path`` (strict, meta-checked); one line if it is missing."""
    path = Path(path)
    if not path.is_file():
        raise BnrError(f"{path}: affinity checkpoint not found (run the train_affinity stage)")
    return model_from_checkpoint(path, affinity_model_meta(params))[0]
