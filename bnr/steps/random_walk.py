"""Stage random_walk: propagate the seed CAMs with AffinityNet affinities (sparse random walk)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from bnr.affinity.affinity_model import load_affinity_model
from bnr.affinity.random_walk import walk_background_score
from bnr.affinity.walk import random_walk_split
from bnr.cam.seeds import best_seed_threshold
from bnr.config.params import Params
from bnr.data.checks import check_stage_inputs
from bnr.data.classes import class_names
from bnr.data.voc import read_split
from bnr.pipeline.metrics_files import write_metrics
from bnr.pipeline.protocol import protocol_record
from bnr.runtime import seed_everything, start_runtime


@dataclass(frozen=True)
class Inputs:
    affinity_checkpoint: Path = field(metadata={"help": "trained AffinityNet (train_affinity)"})
    cams: Path = field(metadata={"help": "CAMs per image (infer_seeds)"})
    seed_threshold: Path = field(metadata={"help": "best seed threshold (eval_seeds; the "
                                                   "background score when "
                                                   "datasets.<d>.random_walk.background is "
                                                   "seed_threshold)"})


@dataclass(frozen=True)
class Outputs:
    labels: Path = field(metadata={"help": "random-walk labels, palette PNGs (folder)"})
    metrics: Path = field(metadata={"help": "images, all-background images, seconds (JSON)"})


def check(cfg: Params, inputs: Inputs) -> None:
    check_stage_inputs(cfg.data.root, [(cfg.data.infer_split, None)], (inputs.cams, ".npz"))


def run(cfg: Params, inputs: Inputs, outputs: Outputs) -> dict:
    """Random-walk labels of every image of ``infer_split``."""
    seed_everything(cfg.seed)
    runtime = start_runtime(cfg.runtime)
    model = runtime.prepare_model(load_affinity_model(
        inputs.affinity_checkpoint, cfg.per_dataset.train_affinity.model, cfg.dataset))
    ids = read_split(cfg.data.root, cfg.data.infer_split)
    walk, rw = cfg.per_dataset.random_walk, cfg.random_walk
    bg = walk_background_score(walk.background, rw.bg_score,
                               best_seed_threshold(inputs.seed_threshold))
    with torch.no_grad():
        stats = random_walk_split(
            model, ids, outputs.labels, inputs.cams, root=Path(cfg.data.root),
            n_labels=len(class_names(cfg.dataset)), beta=rw.beta, logt=rw.logt,
            radius=rw.radius, bg_score=bg, runtime=runtime, scale=walk.scale)
    numbers = {k: stats[k] for k in ("images", "all_background", "seconds")}
    write_metrics(outputs.metrics, numbers, protocol_record(
        cfg, dataset=cfg.dataset, split=cfg.data.infer_split, cams=str(inputs.cams),
        beta=rw.beta, logt=rw.logt, bg_score=bg, background=walk.background,
        scale=walk.scale, radius=rw.radius, walk=f"sparse, float64, on {runtime.device}",
        seed=cfg.seed, runtime=runtime.record(),
    ))
    print(f"random walk: {stats['images']} images ({stats['all_background']} without "
          f"foreground) in {stats['seconds']} s ({runtime.device}, {runtime.precision})")
    return numbers
