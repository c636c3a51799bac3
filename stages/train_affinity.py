"""Stage train_affinity: train PSA's AffinityNet on affinity labels from the seed CAMs."""

from pathlib import Path

from bnr.affinity_training import train_affinity
from bnr.config import Params
from bnr.engine import training_session
from bnr.metrics_files import write_metrics
from bnr.protocol import protocol_record
from bnr.stage import run_stage, seed_everything


def main(params: Params) -> None:
    seed_everything(params.seed)
    with training_session(params) as (runtime, ctx):
        summary = train_affinity(params, Path("models/affinity.pt"),
                                 Path("metrics/train_affinity"), runtime=runtime, ctx=ctx)
    if not ctx.is_main:
        return
    last = summary["history"][-1] if summary["history"] else {}
    cfg, data = params.train_affinity, params.data
    losses = {k: v for k, v in last.items() if k not in ("epoch", "step", "seconds")}
    write_metrics("metrics/train_affinity.json", {
        "final_epoch_loss": {k: v for k, v in losses.items() if not k.endswith("_count")},
        "train_images": summary["train_images"],
        "seconds_this_run": summary["seconds_this_run"],
    }, protocol_record(
        params, runtime={**runtime.record(), "processes": ctx.world_size},
        dataset=params.dataset, split=data.infer_split, cams="data/cams",
        method=params.method, noise_scale=params.noise_scale, seed=params.seed,
        model=data.affinity_model, pretrained=cfg.pretrained or None,
        crop=data.affinity_crop, batch_size=data.affinity_batch_size, lr=data.affinity_lr,
        low_bg=cfg.low_bg, high_bg=cfg.high_bg, radius=cfg.radius, pad_label=cfg.pad_label,
        label_crf={k: v for k, v in vars(params.train_affinity.label_crf).items()
                   if k != "workers"},
        epochs=summary["epochs"], steps=summary["steps"],
        affinity_labels=summary["affinity_labels"],
        final_epoch_pairs={k: v for k, v in losses.items() if k.endswith("_count")},
        epoch_seconds=[h["seconds"] for h in summary["history"]],
        label_seconds=summary["label_seconds"],
    ))


if __name__ == "__main__":
    run_stage(main, __doc__, distributed=True)
