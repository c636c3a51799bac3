"""Params -> the values the library takes, where several steps resolve a key alike (a step
resolves the rest of what it declared itself; the library never sees ``Params``)."""

from __future__ import annotations

from bnr.config.params import Params
from bnr.weights.pretrained import stage_weights


def weights_file(params: Params, block: str) -> str:
    """The weights file ``<block>.pretrained`` means for the training stage ``block``
    (:func:`bnr.weights.pretrained.stage_weights`; the segmenter's follows
    ``train_segmenter.arch``). "" = from scratch."""
    arch = params.train_segmenter.arch if block == "train_segmenter" else "largefov"
    return stage_weights(block, getattr(params, block).pretrained, params.dataset, arch)
