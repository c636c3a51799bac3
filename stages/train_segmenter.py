"""Stage train_segmenter: DeepLab (LargeFOV on ResNet-38d) trained on the CRF pseudo labels."""

from pathlib import Path

from bnr.config import Params
from bnr.engine import training_session
from bnr.metrics_files import write_metrics
from bnr.protocol import protocol_record
from bnr.segmenter_model import segmenter_meta
from bnr.segmenter_training import train_segmenter
from bnr.stage import run_stage, seed_everything


def main(params: Params) -> None:
    seed_everything(params.seed)
    with training_session(params) as (runtime, ctx):
        summary = train_segmenter(params, Path("models/segmenter.pt"),
                                  Path("metrics/train_segmenter"), runtime=runtime, ctx=ctx)
    if not ctx.is_main:
        return
    cfg, data = params.train_segmenter, params.data
    meta = segmenter_meta(params)
    write_metrics("metrics/train_segmenter.json", {
        "final_loss": summary["final_loss"],
        "train_images": summary["train_images"],
        "seconds_this_run": summary["seconds_this_run"],
    }, protocol_record(
        params, runtime={**runtime.record(), "processes": ctx.world_size},
        dataset=params.dataset, split=data.infer_split, labels="data/pseudo_labels",
        method=params.method, noise_scale=params.noise_scale, seed=params.seed,
        arch=cfg.arch, backbone=meta["preset"] if cfg.arch == "largefov" else "resnet101",
        pretrained=cfg.pretrained or None, crop=data.segmenter_crop,
        batch_size=data.segmenter_batch_size, iterations=summary["iterations"],
        resumed_from=summary["resumed_from"],
        seconds_per_iteration=summary["seconds_per_iteration"],
        lr=data.segmenter_lr, lr_mult={"backbone": 1, "backbone_bias": 2, "head": 10,
                                       "head_bias": 20},
        momentum=cfg.momentum, weight_decay=cfg.weight_decay, poly_power=cfg.poly_power,
        resize_scale=list(data.segmenter_resize_scale), flip=True,
    ))
    print(f"train_segmenter: {summary['iterations']} iterations, final loss "
          f"{summary['final_loss']:.4f} ({summary['seconds_this_run']} s)")


if __name__ == "__main__":
    run_stage(main, __doc__, distributed=True)
