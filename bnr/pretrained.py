"""Where the ``*.pretrained`` keys point: ``auto`` is a per-dataset default.

``train_cam.pretrained``, ``train_affinity.pretrained`` and ``train_segmenter.pretrained`` are
global keys, but the weights that make sense depend on the dataset. ``auto`` (the default)
resolves when a stage starts (``bnr.stage.run_stage``):

* ``synthetic``: the pretrain stage's files (:data:`PRETRAINED_FILES`), trained on the
  generated world of ``bnr.data.pretrain_world`` and written in the ImageNet files' layouts;
* ``voc2012`` / ``coco2014``: ``""`` (from scratch, as before): set the key to the ImageNet
  file (``-S train_cam.pretrained=models/pretrained/Conformer_small_patch16.pth``).

Any other value is a path used as given ("" = from scratch).
"""

from __future__ import annotations

import dataclasses

from bnr.config import Params

AUTO = "auto"
PRETRAINED_FILES = {"conformer": "models/pretrain/conformer.pth",
                    "resnet38": "models/pretrain/resnet38d.pth"}
# params block -> which pretrain output its ``auto`` means for the synthetic dataset
AUTO_KEYS = {"train_cam": "conformer", "train_affinity": "resnet38", "train_segmenter": "resnet38"}


def pretrained_path(value: str, dataset: str, kind: str) -> str:
    """The weights file that ``value`` of a ``*.pretrained`` key means ("" = none)."""
    if value != AUTO:
        return value
    return PRETRAINED_FILES[kind] if dataset == "synthetic" else ""


def resolve_pretrained(params: Params) -> Params:
    """``params`` with every ``auto`` ``*.pretrained`` key replaced by its file (or "")."""
    changes = {}
    for block, kind in AUTO_KEYS.items():
        cfg = getattr(params, block)
        path = pretrained_path(cfg.pretrained, params.dataset, kind)
        if path != cfg.pretrained:
            changes[block] = dataclasses.replace(cfg, pretrained=path)
    return dataclasses.replace(params, **changes) if changes else params
