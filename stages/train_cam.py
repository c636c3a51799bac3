"""Stage train_cam: train the Conformer CAM network (TransCAM baseline or BNR).

``runtime.nproc`` > 1 runs it data-parallel under torchrun (the batch size stays global).
"""

from pathlib import Path

from bnr.config import Params
from bnr.engine import training_session
from bnr.metrics_files import write_metrics
from bnr.protocol import protocol_record
from bnr.stage import run_stage, seed_everything
from bnr.training import train_cam


def main(params: Params) -> None:
    seed_everything(params.seed)
    with training_session(params) as (runtime, ctx):
        summary = train_cam(params, Path("models/cam.pt"), Path("metrics/train_cam"),
                            runtime=runtime, ctx=ctx)
    if not ctx.is_main:
        return
    last = summary["history"][-1] if summary["history"] else {}
    write_metrics("metrics/train_cam.json", {
        "final_epoch_loss": {k: v for k, v in last.items()
                             if k not in ("epoch", "step", "seconds")},
        "train_images": summary["train_images"],
        "seconds_this_run": summary["seconds_this_run"],
    }, protocol_record(
        params, dataset=params.dataset, split=params.data.train_split,
        method=params.method, noise_scale=params.noise_scale, seed=params.seed,
        model=params.data.model, pretrained=params.train_cam.pretrained or None,
        epochs=summary["epochs"], steps=summary["steps"],
        runtime={**runtime.record(), "processes": ctx.world_size},
    ))


if __name__ == "__main__":
    run_stage(main, __doc__, distributed=True)
