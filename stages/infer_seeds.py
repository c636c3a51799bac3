"""Stage infer_seeds: multi-scale + flip CAMs (M*) of every image of the inference split."""

import time
from pathlib import Path

import torch

from bnr.cam_model import build_cam_model, cam_model_meta
from bnr.checkpoints import load_checkpoint, load_state_strict
from bnr.config import Params
from bnr.data.classes import class_names
from bnr.data.voc import VocSegmentation
from bnr.metrics_files import write_metrics
from bnr.protocol import protocol_record
from bnr.runtime import start_runtime
from bnr.seeds import infer_split_cams
from bnr.stage import run_stage


def main(params: Params) -> None:
    torch.manual_seed(params.seed)
    runtime = start_runtime(params.runtime)
    ckpt = Path("models/cam.pt")
    state = load_checkpoint(ckpt, cam_model_meta(params))
    model = build_cam_model(params, pretrained=False)
    load_state_strict(model, state["model"], ckpt)
    model = runtime.prepare_model(model)
    dataset = VocSegmentation(params.data.root, params.data.infer_split,
                              class_names(params.dataset), with_mask=False)
    started = time.time()
    n = infer_split_cams(
        model, dataset, Path("data/cams"), params.data.infer_scales,
        flip=params.infer_seeds.flip, resize=params.infer_seeds.resize,
        batch_passes=params.infer_seeds.batch_passes, patch_multiple=model.cfg.patch_size,
        source=params.infer_seeds.source, resample=params.infer_seeds.resample,
        runtime=runtime,
    )
    seconds = round(time.time() - started, 1)
    cfg = params.infer_seeds
    write_metrics("metrics/infer_seeds.json", {"images": n, "seconds": seconds}, protocol_record(
        params, dataset=params.dataset, split=params.data.infer_split,
        scales=list(params.data.infer_scales), flip=cfg.flip, resize=cfg.resize,
        batch_passes=cfg.batch_passes, source=cfg.source, resample=cfg.resample,
        method=params.method,
        noise_scale=params.noise_scale, seed=params.seed, runtime=runtime.record(),
        images_per_second=round(n / max(seconds, 1e-9), 2),
    ))
    print(f"wrote CAMs of {n} images to data/cams in {seconds} s "
          f"({runtime.device}, {runtime.precision})")


if __name__ == "__main__":
    run_stage(main, __doc__)
