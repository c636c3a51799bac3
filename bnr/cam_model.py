"""The CAM network (Conformer with TransCAM's changes) as the stages build and load it: its
checkpoint meta and a fresh model (ImageNet-initialised when ``train_cam.pretrained`` is set)."""

from __future__ import annotations

from torch import nn

from bnr.config import Params
from bnr.data.classes import class_names
from bnr.models.conformer import create_conformer, load_pretrained


def cam_model_meta(params: Params) -> dict:
    """What a CAM checkpoint must agree on to be loaded."""
    return {
        "kind": "cam",
        "preset": params.data.model,
        "num_classes": len(class_names(params.dataset)),
        "dataset": params.dataset,
    }


def build_cam_model(params: Params) -> nn.Module:
    """A fresh Conformer for ``params`` (ImageNet-initialised when train_cam.pretrained is set)."""
    model = create_conformer(params.data.model, num_classes=len(class_names(params.dataset)))
    if params.train_cam.pretrained:
        load_pretrained(model, params.train_cam.pretrained)
    return model
