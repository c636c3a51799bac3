"""Constraints between params keys, checked when ``params.yaml`` is loaded (no data needed).

Each violation is a one-line :class:`~bnr.config.params.ParamsError` naming the keys, e.g.::

    params.yaml: datasets.synthetic.eval_seeds.threshold_start (0.5) must not exceed its
    threshold_stop (0.2)
"""

from __future__ import annotations

from bnr.config.params import Params, ParamsError

# Patch size of each Conformer preset (bnr.models.conformer.PRESETS; a test keeps them equal):
# params are checked without importing the models.
CONFORMER_PATCH: dict[str, int] = {"conformer_s": 16, "conformer_tiny": 8}


def check_constraints(params: Params) -> None:
    """The constraints between keys that need no data (ParamsError naming the key)."""
    sizes, name = params.per_dataset, f"datasets.{params.dataset}"
    cam, es = sizes.train_cam, sizes.eval_seeds
    if es.threshold_start > es.threshold_stop:
        raise ParamsError(f"params.yaml: {name}.eval_seeds.threshold_start "
                          f"({es.threshold_start:g}) must not exceed its threshold_stop "
                          f"({es.threshold_stop:g})")
    patch = CONFORMER_PATCH.get(cam.model)
    if patch is not None and cam.crop_size % patch:
        raise ParamsError(f"params.yaml: {name}.train_cam.crop_size must be a multiple of the "
                          f"patch size {patch} of {name}.train_cam.model={cam.model}, "
                          f"got {cam.crop_size}")
    if patch is not None and params.infer_seeds.resize == "square":
        bad = [s for s in sizes.infer_seeds.scales if s % patch]
        if bad:
            raise ParamsError(f"params.yaml: {name}.infer_seeds.scales must be multiples of the "
                              f"patch size {patch} of {name}.train_cam.model={cam.model}, "
                              f"got {bad[0]}")
    hue = params.train_cam.color_jitter[3]
    if hue > 0.5:  # torchvision's ColorJitter: a hue shift is at most half the colour wheel
        raise ParamsError(f"params.yaml: train_cam.color_jitter[3] (hue) must be <= 0.5, "
                          f"got {hue:g}")
    nproc = params.runtime.nproc
    for stage in ("train_cam", "train_affinity", "train_segmenter"):
        batch = getattr(sizes, stage).batch_size
        if batch % nproc:
            raise ParamsError(f"params.yaml: {name}.{stage}.batch_size={batch} does not split "
                              f"over runtime.nproc={nproc} processes (use a multiple of it)")
