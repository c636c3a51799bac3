"""The CAM network (Conformer with TransCAM's changes) as the stages build and load it: its
checkpoint meta and a fresh model (initialised from a weights file when one is given),
through the model registry (bnr/models/registry.py)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from bnr.data.classes import class_names
from bnr.errors import BnrError
from bnr.models import conformer  # (importing it registers its kind)
from bnr.models.registry import create_model, model_from_checkpoint


def check_patch_multiples(preset: str, sizes: dict[str, list[int]], preset_key: str) -> None:
    """Refuse input sizes the Conformer ``preset`` cannot split into patches, before any work.

    ``sizes``: params key -> its side lengths (px); each must be a multiple of the preset's patch
    size. ``preset_key`` names the key that chose the preset. One line (BnrError) naming both.
    An unknown preset is left to the model registry's own error.
    """
    if preset not in conformer.PRESETS:
        return
    patch = conformer.PRESETS[preset].patch_size
    for key, sides in sizes.items():
        if bad := [s for s in sides if s % patch]:
            raise BnrError(f"params.yaml: {key} must be a multiple of the patch size {patch} of "
                           f"{preset_key}={preset}, got {bad[0]}")


def cam_model_meta(preset: str, dataset: str) -> dict:
    """What a CAM checkpoint must agree on to be loaded: the Conformer ``preset``
    (``datasets.<d>.train_cam.model``) and the ``dataset`` that names the classes."""
    return {
        "kind": "cam",
        "preset": preset,
        "num_classes": len(class_names(dataset)),
        "dataset": dataset,
    }


def build_cam_model(preset: str, dataset: str, init: str, weights: str = "") -> nn.Module:
    """A fresh Conformer ``preset`` with the classes of ``dataset``: attention ``init``
    (``datasets.<d>.train_cam.init``: official or mimetic), then the ``weights`` file's (they
    replace it; "" = none, :func:`bnr.weights.pretrained.stage_weights`)."""
    return create_model("cam", preset, num_classes=len(class_names(dataset)),
                        pretrained=weights, init=init)


def load_cam_model(path: Path, preset: str, dataset: str) -> nn.Module:
    """The trained CAM network of ``path`` in eval mode (strict, meta-checked; weights only):
    the one loader of a CAM checkpoint (infer_seeds, eval_seeds, ``bnr predict``, the attention
    diagnostics, bench/gpu_check.py)."""
    return model_from_checkpoint(path, cam_model_meta(preset, dataset), "train_cam")[0]
