"""AffinityNet (PSA) on ResNet-38d: presets, checkpoint meta, build and strict load."""

from __future__ import annotations

from pathlib import Path

from bnr.checkpoints import load_checkpoint, load_state_strict
from bnr.config import Params
from bnr.errors import BnrError
from bnr.models.resnet38 import PRESETS, AffinityNet, load_imagenet_weights

STRIDE = 8  # AffinityNet output stride


def affinity_model_meta(params: Params) -> dict:
    """What an affinity checkpoint must agree on to be loaded."""
    return {"kind": "affinity", "preset": params.per_dataset.train_affinity.model,
            "dataset": params.dataset}


def build_affinity_model(preset: str, pretrained: str = "") -> AffinityNet:
    """A fresh AffinityNet on ResNet-38d ``preset`` (ImageNet weights if ``pretrained``)."""
    if preset not in PRESETS:
        raise BnrError(
            f"unknown AffinityNet preset {preset!r} (known: {', '.join(sorted(PRESETS))})"
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
    model = build_affinity_model(params.per_dataset.train_affinity.model)
    load_state_strict(model, load_checkpoint(path, affinity_model_meta(params))["model"], path)
    model.eval()
    return model
