"""Stage infer_seeds: multi-scale + flip CAMs (M*) of every image of the inference split."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bnr.cam.cam_model import check_patch_multiples, load_cam_model
from bnr.cam.seeds import infer_split_cams
from bnr.config.params import Params
from bnr.data.checks import check_stage_inputs
from bnr.data.classes import class_names
from bnr.data.voc import VocSegmentation
from bnr.pipeline.metrics_files import write_metrics
from bnr.pipeline.protocol import protocol_record
from bnr.runtime import seed_everything, start_runtime


@dataclass(frozen=True)
class Inputs:
    cam_checkpoint: Path = field(metadata={"help": "trained CAM network (train_cam)"})


@dataclass(frozen=True)
class Outputs:
    cams: Path = field(metadata={"help": "one .npz of CAMs per image (folder)"})
    metrics: Path = field(metadata={"help": "images, seconds (JSON)"})


def check(cfg: Params, inputs: Inputs) -> None:
    if cfg.infer_seeds.resize == "square":  # keep_aspect rounds each side to the patch
        d = f"datasets.{cfg.dataset}"
        check_patch_multiples(cfg.per_dataset.train_cam.model,
                              {f"{d}.infer_seeds.scales": list(cfg.per_dataset.infer_seeds.scales)},
                              f"{d}.train_cam.model")
    check_stage_inputs(cfg.data.root, [(cfg.data.infer_split, None)],
                       labels_of=class_names(cfg.dataset))


def seed_options(cfg: Params, patch_multiple: int) -> dict:
    """The keyword arguments of :func:`bnr.cam.seeds.item_seed_cams` (and
    :func:`~bnr.cam.seeds.infer_split_cams`) from params: the dataset's ``infer_seeds.scales``
    and the ``infer_seeds`` block; ``patch_multiple``: the network's patch size."""
    seeds = cfg.infer_seeds
    return {"scales": cfg.per_dataset.infer_seeds.scales, "flip": seeds.flip,
            "resize": seeds.resize, "batch_passes": seeds.batch_passes,
            "patch_multiple": patch_multiple, "source": seeds.source,
            "resample": seeds.resample}


def run(cfg: Params, inputs: Inputs, outputs: Outputs) -> dict:
    """CAMs of every image of ``infer_split`` at the dataset's ``infer_seeds.scales`` (and
    flipped)."""
    seed_everything(cfg.seed)
    runtime = start_runtime(cfg.runtime)
    model = load_cam_model(inputs.cam_checkpoint, cfg.per_dataset.train_cam.model, cfg.dataset)
    model = runtime.prepare_model(model)
    dataset = VocSegmentation(cfg.data.root, cfg.data.infer_split, class_names(cfg.dataset),
                              with_mask=False)
    seeds = cfg.infer_seeds
    started = time.time()
    with torch.no_grad():
        n = infer_split_cams(model, dataset, outputs.cams,
                             **seed_options(cfg, model.cfg.patch_size), runtime=runtime)
    seconds = round(time.time() - started, 1)
    numbers = {"images": n, "seconds": seconds}
    write_metrics(outputs.metrics, numbers, protocol_record(
        cfg, dataset=cfg.dataset, split=cfg.data.infer_split,
        scales=list(cfg.per_dataset.infer_seeds.scales), flip=seeds.flip, resize=seeds.resize,
        batch_passes=seeds.batch_passes, source=seeds.source, resample=seeds.resample,
        method=cfg.method, noise_scale=cfg.noise_scale, seed=cfg.seed,
        runtime=runtime.record(), images_per_second=round(n / max(seconds, 1e-9), 2),
    ))
    print(f"wrote CAMs of {n} images to {outputs.cams} in {seconds} s "
          f"({runtime.device}, {runtime.precision})")
    return numbers
