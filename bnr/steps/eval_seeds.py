"""Stage eval_seeds: seed mIoU over the background-threshold sweep, curve and overlays."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bnr.cam.cam_model import load_cam_model
from bnr.cam.maps import cams_to_seeds
from bnr.cam.seeds import load_cams, seed_miou_sweep, threshold_grid
from bnr.config.params import Params
from bnr.data.checks import check_stage_inputs
from bnr.data.classes import class_names
from bnr.data.transforms import EvalTransform
from bnr.data.voc import VocSegmentation
from bnr.io import atomic_path, write_json, write_text
from bnr.metrics import per_class_table, sweep_mious, write_class_table
from bnr.pipeline.metrics_files import write_metrics
from bnr.pipeline.protocol import protocol_record
from bnr.pipeline.visualize import (
    SEED_TITLES,
    class_token_attention,
    colorize_labels,
    heat_overlay,
    titled_panel,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    cams: Path = field(metadata={"help": "CAMs per image (infer_seeds)"})
    cam_checkpoint: Path = field(metadata={"help": "trained CAM network (attention overlays)"})


@dataclass(frozen=True)
class Outputs:
    metrics: Path = field(metadata={"help": "best seed mIoU and its threshold (JSON)"})
    threshold: Path = field(metadata={"help": "the best threshold alone (JSON; crf reads it)"})
    sweep: Path = field(metadata={"help": "mIoU per threshold (CSV plot)"})
    per_class: Path = field(metadata={"help": "per-class IoU at the best threshold (CSV; "
                                              "a .md twin beside it)"})
    overlays: Path = field(metadata={"help": "CAM / seed / attention panels (folder)"})


def check(cfg: Params, inputs: Inputs) -> None:
    check_stage_inputs(cfg.data.root, [(cfg.data.seed_eval_split, cfg.data.gt_dir)],
                       (inputs.cams, ".npz"), labels_of=class_names(cfg.dataset))


def run(cfg: Params, inputs: Inputs, outputs: Outputs) -> dict:
    """Sweep the background threshold; write the best mIoU, the curve, the table, overlays."""
    names = class_names(cfg.dataset)
    sweep, data = cfg.per_dataset.eval_seeds, cfg.data
    dataset = VocSegmentation(data.root, data.seed_eval_split, names, mask_dir=data.gt_dir)
    thresholds = sweep_thresholds(cfg)
    confs = seed_miou_sweep(inputs.cams, Path(data.root), dataset.ids, data.gt_dir,
                            len(names), thresholds)
    mious, best = sweep_mious(confs)
    at_end = sweep_end_note(thresholds, best, f"datasets.{cfg.dataset}.eval_seeds")
    write_text(outputs.sweep, pd.DataFrame(
        {"threshold": thresholds, "miou": np.round(mious * 100, 3)}).to_csv(index=False))
    write_class_table(per_class_table(confs[best], names), outputs.per_class.with_suffix(""))
    numbers = {
        "miou": round(float(mious[best]) * 100, 3),  # first: dvc exp show --csv names it
        "best_threshold": float(thresholds[best]),
        "images": len(dataset.ids),
    }
    write_metrics(outputs.metrics, numbers, protocol_record(
        cfg, dataset=cfg.dataset, split=data.seed_eval_split,
        images=len(dataset.ids), ground_truth=data.gt_dir,
        scales=list(cfg.per_dataset.infer_seeds.scales),
        flip=cfg.infer_seeds.flip, resize=cfg.infer_seeds.resize, crf=False,
        cam_source=cfg.infer_seeds.source,
        threshold="swept", thresholds=[float(thresholds[0]), float(thresholds[-1]),
                                       sweep.threshold_step],
        best_at_sweep_end=at_end is not None, sweep_note=at_end or "",
        method=cfg.method, noise_scale=cfg.noise_scale, seed=cfg.seed,
        metric="mIoU (%) over all classes from the accumulated confusion matrix",
        per_class=str(outputs.per_class),
    ))
    # the one number the crf stage needs, in a file of its own: a dep that changes only with it
    write_json(outputs.threshold, {"best_threshold": float(thresholds[best])})
    print(f"seed mIoU {mious[best] * 100:.2f} at threshold {thresholds[best]:.2f}")
    with torch.no_grad():
        write_overlays(cfg, dataset, float(thresholds[best]), inputs, outputs.overlays)
    return numbers


def sweep_thresholds(cfg: Params) -> np.ndarray:
    """The background thresholds of the sweep (``datasets.<d>.eval_seeds``)."""
    sweep = cfg.per_dataset.eval_seeds
    return threshold_grid(sweep.threshold_start, sweep.threshold_stop, sweep.threshold_step)


def sweep_end_note(thresholds: np.ndarray, best: int, block: str) -> str | None:
    """A warning (logged, and returned for the protocol) when the best threshold is the last
    value of the sweep: the optimum may lie beyond it. None when it lies inside."""
    if best != len(thresholds) - 1 or len(thresholds) < 2:
        return None
    note = (f"the best threshold {thresholds[best]:.2f} is the end of the sweep: the optimum may "
            f"lie beyond it (widen {block}.threshold_stop)")
    log.warning("eval_seeds: %s", note)
    return note


def write_overlays(cfg: Params, dataset: VocSegmentation, threshold: float, inputs: Inputs,
                   out: Path) -> None:
    """image | ground truth | seed CAM M* | seeds | class-token attention, for the first
    images, titled, with the class colours and the heat ramp below."""
    model = load_cam_model(inputs.cam_checkpoint, cfg.per_dataset.train_cam.model, cfg.dataset)
    size = cfg.per_dataset.infer_seeds.scales[len(cfg.per_dataset.infer_seeds.scales) // 2]
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for index in range(min(cfg.eval_seeds.overlays, len(dataset))):
            item = dataset[index]
            image, mask = item["image"], item["mask"]
            classes, cams = load_cams(inputs.cams, item["id"], mask.shape)
            heat = cams.max(0) if len(classes) else np.zeros(mask.shape, np.float32)
            seeds = cams_to_seeds(cams, classes, threshold)
            attn = class_token_attention(model, EvalTransform()(image, None)[0], size)
            tiles = [image, colorize_labels(mask), heat_overlay(image, heat),
                     colorize_labels(seeds), heat_overlay(image, attn)]
            Image.fromarray(titled_panel(tiles, SEED_TITLES, class_names(cfg.dataset),
                                         heat=True)).save(tmp / f"{item['id']}.png")
