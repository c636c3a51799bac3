"""Constraints between params keys, checked when ``params.yaml`` is loaded (no data needed).

Each violation is a one-line :class:`~bnr.config.params.ParamsError` naming the keys, e.g.::

    params.yaml: datasets.synthetic.eval_seeds.threshold_start (0.5) must not exceed its
    threshold_stop (0.2)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bnr.config.param_spec import ParamsError

if TYPE_CHECKING:  # params.py calls check_constraints: no import cycle at run time
    from bnr.config.params import Params


def check_constraints(params: Params) -> None:
    """The constraints between keys that need no data and no model (ParamsError naming the
    key); those that need the model's patch size are the train_cam and infer_seeds steps'."""
    sizes, name = params.per_dataset, f"datasets.{params.dataset}"
    es = sizes.eval_seeds
    if es.threshold_start > es.threshold_stop:
        raise ParamsError(f"params.yaml: {name}.eval_seeds.threshold_start "
                          f"({es.threshold_start:g}) must not exceed its threshold_stop "
                          f"({es.threshold_stop:g})")
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
