"""The CAM network (Conformer with TransCAM's changes) as the stages build and load it: its
checkpoint meta and a fresh model (ImageNet-initialised when ``train_cam.pretrained`` is set),
through the model registry (bnr/models/registry.py)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from bnr.config.params import Params
from bnr.data.classes import class_names
from bnr.models import conformer  # noqa: F401 (registers its kind)
from bnr.models.registry import create_model, model_from_checkpoint
from bnr.weights.pretrained import stage_weights


def cam_model_meta(params: Params) -> dict:
    """What a CAM checkpoint must agree on to be loaded."""
    return {
        "kind": "cam",
        "preset": params.per_dataset.train_cam.model,
        "num_classes": len(class_names(params.dataset)),
        "dataset": params.dataset,
    }


def build_cam_model(params: Params, pretrained: bool = True) -> nn.Module:
    """A fresh Conformer for ``params``: ``datasets.<d>.train_cam.init`` (official or mimetic
    attention), then ``train_cam.pretrained``'s weights when ``pretrained`` (they replace it)."""
    sizes = params.per_dataset.train_cam
    weights = stage_weights(params, "train_cam") if pretrained else ""
    return create_model("cam", sizes.model, num_classes=len(class_names(params.dataset)),
                        pretrained=weights, init=sizes.init)


def load_cam_model(params: Params, path: Path) -> nn.Module:
    """The trained CAM network of ``path`` in eval mode (strict, meta-checked)."""
    return model_from_checkpoint(path, cam_model_meta(params), "train_cam")[0]
