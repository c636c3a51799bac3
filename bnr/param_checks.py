"""Constraints between params keys, checked when ``params.yaml`` is loaded (no data needed).

Each violation is a one-line :class:`~bnr.config.ParamsError` naming the keys, e.g.::

    params.yaml: eval_seeds.threshold_start (0.5) must not exceed eval_seeds.threshold_stop (0.2)
"""

from __future__ import annotations

from bnr.config import Params, ParamsError

# Patch size of each Conformer preset (bnr.models.conformer.PRESETS; a test keeps them equal):
# params are checked without importing the models.
CONFORMER_PATCH: dict[str, int] = {"conformer_s": 16, "conformer_tiny": 8}


def check_constraints(params: Params) -> None:
    """The constraints between keys that need no data (ParamsError naming the key)."""
    data, name, es = params.data, f"datasets.{params.dataset}", params.eval_seeds
    if es.threshold_start > es.threshold_stop:
        raise ParamsError(f"params.yaml: eval_seeds.threshold_start ({es.threshold_start:g}) "
                          f"must not exceed eval_seeds.threshold_stop ({es.threshold_stop:g})")
    patch = CONFORMER_PATCH.get(data.model)
    if patch is not None and data.crop_size % patch:
        raise ParamsError(f"params.yaml: {name}.crop_size must be a multiple of the patch size "
                          f"{patch} of {name}.model={data.model}, got {data.crop_size}")
    if patch is not None and params.infer_seeds.resize == "square":
        bad = [s for s in data.infer_scales if s % patch]
        if bad:
            raise ParamsError(f"params.yaml: {name}.infer_scales must be multiples of the patch "
                              f"size {patch} of {name}.model={data.model}, got {bad[0]}")
    nproc = params.runtime.nproc
    for key in ("batch_size", "affinity_batch_size", "segmenter_batch_size"):
        if getattr(data, key) % nproc:
            raise ParamsError(f"params.yaml: {name}.{key}={getattr(data, key)} does not split "
                              f"over runtime.nproc={nproc} processes (use a multiple of it)")
