"""Stage train_affinity: train PSA's AffinityNet on affinity labels from the seed CAMs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bnr.affinity.affinity_training import AffinityTrainingPlan, train_affinity
from bnr.config.params import Params
from bnr.data.checks import check_stage_inputs
from bnr.engine import training_session
from bnr.pipeline.crf_blocks import crf_settings
from bnr.pipeline.metrics_files import write_metrics
from bnr.pipeline.protocol import protocol_record
from bnr.pipeline.resolve import plan_from_blocks, weights_file
from bnr.runtime import seed_everything
from bnr.weights.fingerprints import verify_fingerprint

DISTRIBUTED = True


@dataclass(frozen=True)
class Inputs:
    cams: Path = field(metadata={"help": "CAMs per image (infer_seeds)"})
    weights: Path = field(metadata={"help": "fingerprint of the train_affinity.pretrained file "
                                            "(weights stage)"})


@dataclass(frozen=True)
class Outputs:
    checkpoint: Path = field(metadata={"help": "trained AffinityNet"})
    metrics: Path = field(metadata={"help": "final epoch losses (JSON)"})
    curves: Path = field(metadata={"help": "dvclive folder of the training curves "
                                                   "(DVC plots its plots/metrics)"})


def training_plan(cfg: Params) -> AffinityTrainingPlan:
    """The values :func:`train_affinity` trains with, from the params this stage declares."""
    return plan_from_blocks(
        AffinityTrainingPlan, (cfg.per_dataset.train_affinity, cfg.train_affinity),
        dataset=cfg.dataset, root=cfg.data.root, split=cfg.data.infer_split,
        weights=weights_file(cfg, "train_affinity"), seed=cfg.seed,
        label_crf=crf_settings(cfg.train_affinity.label_crf), protocol=cfg.protocol())


def check(cfg: Params, inputs: Inputs) -> None:
    verify_fingerprint(inputs.weights, "train_affinity.pretrained",
                       weights_file(cfg, "train_affinity"))
    check_stage_inputs(cfg.data.root, [(cfg.data.infer_split, None)], (inputs.cams, ".npz"))


def run(cfg: Params, inputs: Inputs, outputs: Outputs) -> dict:
    """Label pairs from the CAMs, train; write the checkpoint, curves and final losses."""
    seed_everything(cfg.seed)
    with training_session(cfg.runtime) as (runtime, ctx):
        summary = train_affinity(training_plan(cfg), outputs.checkpoint, outputs.curves,
                                 inputs.cams, runtime=runtime, ctx=ctx)
    if not ctx.is_main:
        return {}
    last = summary["history"][-1] if summary["history"] else {}
    aff, data = cfg.train_affinity, cfg.data
    sizes = cfg.per_dataset.train_affinity
    losses = {k: v for k, v in last.items() if k not in ("epoch", "step", "seconds")}
    numbers = {
        "final_epoch_loss": {k: v for k, v in losses.items() if not k.endswith("_count")},
        "train_images": summary["train_images"],
        "seconds_this_run": summary["seconds_this_run"],
    }
    write_metrics(outputs.metrics, numbers, protocol_record(
        cfg, runtime={**runtime.record(), "processes": ctx.world_size},
        dataset=cfg.dataset, split=data.infer_split, cams=str(inputs.cams),
        method=cfg.method, noise_scale=cfg.noise_scale, seed=cfg.seed,
        model=sizes.model, pretrained=weights_file(cfg, "train_affinity") or None,
        crop=sizes.crop, batch_size=sizes.batch_size, lr=sizes.lr,
        low_bg=aff.low_bg, high_bg=aff.high_bg, radius=aff.radius, pad_label=aff.pad_label,
        label_crf={k: v for k, v in vars(aff.label_crf).items() if k != "workers"},
        epochs=summary["epochs"], steps=summary["steps"],
        affinity_labels=summary["affinity_labels"],
        final_epoch_pairs={k: v for k, v in losses.items() if k.endswith("_count")},
        epoch_seconds=[h["seconds"] for h in summary["history"]],
        label_seconds=summary["label_seconds"],
    ))
    return numbers
