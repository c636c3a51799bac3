"""Stage train_cam: train the Conformer CAM network (TransCAM baseline or BNR).

``runtime.nproc`` > 1 runs it data-parallel under torchrun (the batch size stays global).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bnr.cam.cam_model import check_patch_multiples
from bnr.cam.training import CamTrainingPlan, train_cam
from bnr.config.params import Params
from bnr.data.checks import check_stage_inputs
from bnr.data.classes import class_names
from bnr.engine import training_session
from bnr.pipeline.metrics_files import write_metrics
from bnr.pipeline.protocol import protocol_record
from bnr.pipeline.resolve import plan_from_blocks, weights_file
from bnr.runtime import seed_everything
from bnr.weights.fingerprints import verify_fingerprint

DISTRIBUTED = True


@dataclass(frozen=True)
class Inputs:
    """Also the images of ``train_split`` (params)."""

    weights: Path = field(metadata={"help": "fingerprint of the train_cam.pretrained file "
                                            "(weights stage)"})


@dataclass(frozen=True)
class Outputs:
    checkpoint: Path = field(metadata={"help": "trained CAM network"})
    metrics: Path = field(metadata={"help": "final epoch losses (JSON)"})
    curves: Path = field(metadata={"help": "dvclive folder of the training curves "
                                                   "(DVC plots its plots/metrics)"})


def training_plan(cfg: Params) -> CamTrainingPlan:
    """The values :func:`train_cam` trains with, from the params this stage declares."""
    return plan_from_blocks(
        CamTrainingPlan, (cfg.per_dataset.train_cam, cfg.train_cam),
        dataset=cfg.dataset, root=cfg.data.root, split=cfg.data.train_split,
        weights=weights_file(cfg, "train_cam"), method=cfg.method,
        noise_scale=None if cfg.noise_scale == "none" else cfg.noise_scale, seed=cfg.seed,
        protocol=cfg.protocol())


def check(cfg: Params, inputs: Inputs) -> None:
    name, sizes = f"datasets.{cfg.dataset}.train_cam", cfg.per_dataset.train_cam
    check_patch_multiples(sizes.model, {f"{name}.crop_size": [sizes.crop_size]},
                          f"{name}.model")
    verify_fingerprint(inputs.weights, "train_cam.pretrained",
                       weights_file(cfg, "train_cam"))
    check_stage_inputs(cfg.data.root, [(cfg.data.train_split, None)],
                       labels_of=class_names(cfg.dataset))


def run(cfg: Params, inputs: Inputs, outputs: Outputs) -> dict:
    """Train; write the checkpoint, the curves and the final losses."""
    seed_everything(cfg.seed)
    with training_session(cfg.runtime) as (runtime, ctx):
        summary = train_cam(training_plan(cfg), outputs.checkpoint, outputs.curves,
                            runtime=runtime, ctx=ctx)
    if not ctx.is_main:
        return {}
    last = summary["history"][-1] if summary["history"] else {}
    numbers = {
        "final_epoch_loss": {k: v for k, v in last.items()
                             if k not in ("epoch", "step", "seconds")},
        "train_images": summary["train_images"],
        "seconds_this_run": summary["seconds_this_run"],
    }
    write_metrics(outputs.metrics, numbers, protocol_record(
        cfg, dataset=cfg.dataset, split=cfg.data.train_split,
        method=cfg.method, noise_scale=cfg.noise_scale, seed=cfg.seed,
        model=cfg.per_dataset.train_cam.model, pretrained=weights_file(cfg, "train_cam") or None,
        attention_init=cfg.per_dataset.train_cam.init,  # replaced by loaded weights if any
        epochs=summary["epochs"], steps=summary["steps"],
        runtime={**runtime.record(), "processes": ctx.world_size},
    ))
    return numbers
