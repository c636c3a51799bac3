"""A dense CRF as the library runs it: its keyword arguments and its worker count (the step
resolves them from the ``crf`` / ``train_affinity.label_crf`` params blocks)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CrfSettings:
    """``kwargs``: the keyword arguments of :func:`bnr.pseudo_labels.crf.dense_crf_labels`
    (Gaussian / bilateral kernels, iterations); ``workers``: processes of
    :func:`bnr.pseudo_labels.crf.crf_map` (None = all available cores)."""

    kwargs: dict = field(default_factory=dict)
    workers: int | None = None
