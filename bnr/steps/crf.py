"""Stage crf: dense-CRF the random-walk labels into pseudo labels; mIoU of seeds / RW / CRF."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bnr.affinity.random_walk import walk_background_score
from bnr.config.params import Params
from bnr.data.checks import check_stage_inputs
from bnr.data.classes import class_names
from bnr.data.voc import read_split
from bnr.metrics import write_class_table
from bnr.pipeline.crf_blocks import crf_settings
from bnr.pipeline.metrics_files import write_metrics
from bnr.pipeline.protocol import protocol_record
from bnr.pseudo_labels.crf_labels import crf_split, evaluate_pseudo_labels


@dataclass(frozen=True)
class Inputs:
    rw_labels: Path = field(metadata={"help": "random-walk labels (random_walk)"})
    cams: Path = field(metadata={"help": "CAMs per image (seed mIoU on the same images)"})
    seed_threshold: Path = field(metadata={"help": "best seed threshold (eval_seeds)"})


@dataclass(frozen=True)
class Outputs:
    pseudo_labels: Path = field(metadata={"help": "CRF pseudo labels, palette PNGs (folder)"})
    metrics: Path = field(metadata={"help": "mIoU after random walk and CRF (JSON)"})
    per_class: Path = field(metadata={"help": "per-class IoU of seeds / RW / CRF (CSV; a .md "
                                              "twin beside it)"})


def check(cfg: Params, inputs: Inputs) -> None:
    data = cfg.data
    check_stage_inputs(data.root, [(data.infer_split, None), (data.seed_eval_split, data.gt_dir)],
                       (inputs.rw_labels, ".png"))


def run(cfg: Params, inputs: Inputs, outputs: Outputs) -> dict:
    """CRF every random-walk label; evaluate seeds, random walk and CRF on ``seed_eval_split``."""
    data, rw, walk = cfg.data, cfg.random_walk, cfg.per_dataset.random_walk
    ids = read_split(data.root, data.infer_split)
    stats = crf_split(ids, inputs.rw_labels, outputs.pseudo_labels, root=Path(data.root),
                      n_labels=len(class_names(cfg.dataset)), crf=crf_settings(cfg.crf))
    metrics, table = evaluate_pseudo_labels(
        inputs.rw_labels, outputs.pseudo_labels, inputs.cams, inputs.seed_threshold,
        dataset=cfg.dataset, root=Path(data.root), gt_dir=data.gt_dir,
        eval_split=data.seed_eval_split, infer_split=data.infer_split)
    write_class_table(table, outputs.per_class.with_suffix(""))
    numbers = {  # the seeds' mIoU: eval_seeds' metrics
        **{k: metrics[k] for k in ("miou_random_walk", "miou_crf")},
        "images_evaluated": metrics["images"],
        "all_background_images": stats["all_background"],
        "crf_seconds": stats["seconds"],
    }
    write_metrics(outputs.metrics, numbers, protocol_record(
        cfg, dataset=cfg.dataset, split=data.seed_eval_split,
        labelled_split=data.infer_split, images=metrics["images"],
        images_labelled=stats["images"],
        ground_truth=data.gt_dir, method=cfg.method, noise_scale=cfg.noise_scale,
        seed=cfg.seed, num_classes=len(class_names(cfg.dataset)),
        seed_threshold=metrics["seed_threshold"], miou_seeds=metrics["miou_seeds"],
        affinity_model=cfg.per_dataset.train_affinity.model,
        beta=rw.beta, logt=rw.logt, radius=rw.radius, random_walk="sparse",
        bg_score=walk_background_score(walk.background, rw.bg_score,
                                       metrics["seed_threshold"]),  # the walk's own
        walk_background=walk.background, walk_scale=walk.scale, crf=crf_settings(cfg.crf).kwargs,
        metric="mIoU (%) over all classes from the accumulated confusion matrix",
        per_class=str(outputs.per_class),
    ))
    print(f"mIoU seeds {metrics['miou_seeds']:.2f}, random walk "
          f"{metrics['miou_random_walk']:.2f}, CRF {metrics['miou_crf']:.2f} "
          f"({metrics['images']} images; CRF {stats['seconds']} s)")
    return numbers
