"""The ``crf`` / ``train_affinity.label_crf`` params blocks as arguments of the dense CRF."""

from __future__ import annotations

from dataclasses import asdict

from bnr.config.params import CrfConfig


def crf_kwargs(cfg: CrfConfig) -> dict:
    """The keyword arguments of :func:`dense_crf_labels` from the ``crf`` params block."""
    return {k: v for k, v in asdict(cfg).items() if k != "workers"}


def crf_workers(cfg: CrfConfig) -> int | None:
    """``crf.workers``: 0 -> None (all available cores, as :func:`crf_map` counts them)."""
    return None if cfg.workers == 0 else cfg.workers
