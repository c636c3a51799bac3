"""A CRF params block (``crf``, ``train_affinity.label_crf``) as the library's
:class:`~bnr.pseudo_labels.crf_settings.CrfSettings` (its own module, so only the stages that
run a CRF depend on it)."""

from __future__ import annotations

from dataclasses import asdict

from bnr.config.params import CrfConfig
from bnr.pseudo_labels.crf_settings import CrfSettings


def crf_settings(block: CrfConfig) -> CrfSettings:
    """The dense CRF of ``block``: its keyword arguments (every key but ``workers``) and its
    processes (``workers`` 0 -> None: all available cores)."""
    return CrfSettings(kwargs={k: v for k, v in asdict(block).items() if k != "workers"},
                       workers=None if block.workers == 0 else block.workers)
