"""Stage train_segmenter: DeepLab (LargeFOV on ResNet-38d) trained on the CRF pseudo labels,
or, with ``train_segmenter.labels: ground_truth``, on the ground-truth masks of the same split
(``datasets.<d>.data.gt_dir``): the fully supervised ceiling of the same segmenter and schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bnr.config.params import Params
from bnr.data.checks import check_stage_inputs
from bnr.engine import training_session
from bnr.pipeline.metrics_files import write_metrics
from bnr.pipeline.protocol import protocol_record
from bnr.pipeline.resolve import plan_from_blocks, weights_file
from bnr.runtime import seed_everything
from bnr.segmenter.segmenter_training import SegmenterTrainingPlan, train_segmenter
from bnr.weights.fingerprints import verify_fingerprint

DISTRIBUTED = True


@dataclass(frozen=True)
class Inputs:
    pseudo_labels: Path = field(metadata={"help": "CRF pseudo labels (crf)"})
    weights: Path = field(metadata={"help": "fingerprint of the train_segmenter.pretrained file "
                                            "(weights stage)"})


@dataclass(frozen=True)
class Outputs:
    checkpoint: Path = field(metadata={"help": "trained segmenter"})
    metrics: Path = field(metadata={"help": "final loss (JSON)"})
    curves: Path = field(metadata={"help": "dvclive folder of the training curves "
                                                   "(DVC plots its plots/metrics)"})


def training_plan(cfg: Params) -> SegmenterTrainingPlan:
    """The values :func:`train_segmenter` trains with, from the params this stage declares."""
    return plan_from_blocks(
        SegmenterTrainingPlan, (cfg.per_dataset.train_segmenter, cfg.train_segmenter),
        dataset=cfg.dataset, root=cfg.data.root, split=cfg.data.infer_split,
        weights=weights_file(cfg, "train_segmenter"), seed=cfg.seed, protocol=cfg.protocol())


def label_dir(cfg: Params, inputs: Inputs) -> Path:
    """The masks the segmenter learns from: the CRF pseudo labels, or the ground truth."""
    if cfg.train_segmenter.labels == "ground_truth":
        return Path(cfg.data.root) / cfg.data.gt_dir
    return Path(inputs.pseudo_labels)


def check(cfg: Params, inputs: Inputs) -> None:
    verify_fingerprint(inputs.weights, "train_segmenter.pretrained",
                       weights_file(cfg, "train_segmenter"))
    gt_dir = cfg.data.gt_dir
    if cfg.train_segmenter.labels == "ground_truth":  # every image of the split needs its mask
        check_stage_inputs(cfg.data.root, [(cfg.data.infer_split, gt_dir)])
    else:
        check_stage_inputs(cfg.data.root, [(cfg.data.infer_split, None)],
                           (inputs.pseudo_labels, ".png"))


def run(cfg: Params, inputs: Inputs, outputs: Outputs) -> dict:
    """Train on the pseudo labels (or ground truth) of ``infer_split``; write the checkpoint,
    curves, final loss."""
    seed_everything(cfg.seed)
    plan = training_plan(cfg)
    with training_session(cfg.runtime) as (runtime, ctx):
        summary = train_segmenter(plan, outputs.checkpoint, outputs.curves,
                                  label_dir(cfg, inputs), runtime=runtime, ctx=ctx)
    if not ctx.is_main:
        return {}
    seg, data = cfg.train_segmenter, cfg.data
    sizes = cfg.per_dataset.train_segmenter
    numbers = {
        "final_loss": summary["final_loss"],
        "train_images": summary["train_images"],
        "seconds_this_run": summary["seconds_this_run"],
    }
    write_metrics(outputs.metrics, numbers, protocol_record(
        cfg, runtime={**runtime.record(), "processes": ctx.world_size},
        dataset=cfg.dataset, split=data.infer_split, labels=str(label_dir(cfg, inputs)),
        trained_on=seg.labels,
        method=cfg.method, noise_scale=cfg.noise_scale, seed=cfg.seed,
        arch=seg.arch, backbone=plan.backbone if seg.arch == "largefov" else "resnet101",
        pretrained=weights_file(cfg, "train_segmenter") or None, crop=sizes.crop,
        batch_size=sizes.batch_size, iterations=summary["iterations"],
        resumed_from=summary["resumed_from"],
        seconds_per_iteration=summary["seconds_per_iteration"],
        lr=sizes.lr, lr_mult={"backbone": 1, "backbone_bias": 2, "head": sizes.head_lr_mult,
                              "head_bias": 2 * sizes.head_lr_mult},
        classifier_init=sizes.classifier_init, class_weights=sizes.class_weights,
        class_weight_values=summary.get("class_weights"),
        momentum=seg.momentum, weight_decay=seg.weight_decay, poly_power=seg.poly_power,
        resize_scale=list(sizes.resize_scale), flip=True,
    ))
    print(f"train_segmenter: {summary['iterations']} iterations, final loss "
          f"{summary['final_loss']:.4f} ({summary['seconds_this_run']} s)")
    return numbers
