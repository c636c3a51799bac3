"""The one model registry: every network the pipeline trains, by kind and preset, with the
ImageNet weights each can start from.

=========  ===================================  ======================  =======================
kind       family file                          presets                 ImageNet weight sources
=========  ===================================  ======================  =======================
cam        bnr/models/conformer.py              conformer_s, _tiny      conformer_s
affinity   bnr/models/resnet38.py (AffinityNet) resnet38d, _tiny        resnet38_mxnet, _pytorch
segmenter  bnr/models/deeplab.py (arch below)   resnet38d, _tiny        resnet38_mxnet, _pytorch
=========  ===================================  ======================  =======================

Each family file registers its kind when imported (as timm's model files do), so a stage that
imports one family depends on that file alone. Weight sources are names in
``bnr.data.sources.SOURCES`` (URL, checksum); each family file has the ``checkpoint_filter_fn``
of every foreign layout it reads. A bnr checkpoint records its
``kind`` and ``preset`` (and ``arch``, ``num_classes``) in its ``meta``, so
:func:`model_from_checkpoint` rebuilds any of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from bnr.checkpoints import load_checkpoint, load_state_strict
from bnr.errors import BnrError


@dataclass(frozen=True)
class ModelKind:
    """One kind of network: how to build a preset, fresh or from ImageNet weights."""

    family: str  # bnr/models/<family>.py, which registers it
    presets: tuple[str, ...]
    build: Callable[..., nn.Module]  # (preset, num_classes, pretrained, **options) -> model
    weight_sources: tuple[str, ...]  # names in bnr.data.sources.SOURCES


MODELS: dict[str, ModelKind] = {}  # filled by the family files when they are imported
FAMILIES = {"cam": "conformer", "affinity": "resnet38", "segmenter": "deeplab"}


def register_model(kind: str, entry: ModelKind) -> None:
    """Called by a family file at import: ``kind`` is built by ``entry``."""
    MODELS[kind] = entry


def import_all_families() -> None:
    """Import every family file (their registrations). Tools that take any checkpoint call
    it; a stage imports only its own family, so its DVC code deps stay exact."""
    import importlib

    for family in sorted(set(FAMILIES.values())):
        importlib.import_module(f"bnr.models.{family}")


def create_model(kind: str, preset: str, *, num_classes: int | None = None,
                 pretrained: str | os.PathLike[str] = "", **options: Any) -> nn.Module:
    """A fresh network of ``kind`` and ``preset`` (ImageNet-initialised from the file
    ``pretrained``, "" = random); ``options`` go to the family (``arch``, ``bn_momentum`` for a
    segmenter; config overrides for a Conformer). Unknown names are one BnrError line."""
    if kind not in FAMILIES:
        raise BnrError(f"unknown model kind {kind!r} (known: {', '.join(FAMILIES)})")
    if kind not in MODELS:  # a programming error: the caller must import the family
        raise RuntimeError(f"model kind {kind!r} is not registered: import "
                           f"bnr.models.{FAMILIES[kind]} first")
    entry = MODELS[kind]
    if preset not in entry.presets:
        raise BnrError(f"unknown {kind} preset {preset!r} (known: {', '.join(entry.presets)})")
    return entry.build(preset, num_classes, str(pretrained or ""), **options)


def model_from_checkpoint(path: str | os.PathLike[str], expected_meta: dict | None = None,
                          made_by: str = "") -> tuple[nn.Module, dict]:
    """``(network in eval mode, checkpoint)`` of the bnr checkpoint ``path``, rebuilt from its
    ``meta`` and loaded strictly; ``expected_meta`` must match (one line otherwise).
    ``made_by``: the stage that writes it, named when the file is missing."""
    path = Path(path)
    if not path.is_file():
        hint = f" (run the {made_by} stage)" if made_by else ""
        raise BnrError(f"{path}: checkpoint not found{hint}")
    state = load_checkpoint(path, expected_meta or {})
    meta = state["meta"]
    options = {"arch": meta["arch"]} if "arch" in meta else {}
    classes = meta.get("num_classes")
    model = create_model(str(meta.get("kind")), str(meta.get("preset")),
                         num_classes=None if classes is None else int(classes), **options)
    load_state_strict(model, state["model"], path)
    model.eval()
    return model, state
