"""Stage random_walk: propagate the seed CAMs with AffinityNet affinities (sparse random walk)."""

from pathlib import Path

import torch

from bnr.affinity_model import load_affinity_model
from bnr.config import Params
from bnr.data.voc import read_split
from bnr.metrics_files import write_metrics
from bnr.protocol import protocol_record
from bnr.runtime import start_runtime
from bnr.stage import run_stage, seed_everything
from bnr.walk import random_walk_split


def main(params: Params) -> None:
    seed_everything(params.seed)
    runtime = start_runtime(params.runtime)
    model = runtime.prepare_model(load_affinity_model(params, Path("models/affinity.pt")))
    ids = read_split(params.data.root, params.data.infer_split)
    stats = random_walk_split(params, model, ids, Path("data/rw_labels"), runtime=runtime)
    rw = params.random_walk
    write_metrics("metrics/random_walk.json", {
        k: stats[k] for k in ("images", "all_background", "seconds")
    }, protocol_record(
        params, dataset=params.dataset, split=params.data.infer_split, cams="data/cams",
        beta=rw.beta, logt=rw.logt, bg_score=rw.bg_score, radius=rw.radius,
        walk="sparse, CPU", seed=params.seed, runtime=runtime.record(),
    ))
    print(f"random walk: {stats['images']} images ({stats['all_background']} without "
          f"foreground) in {stats['seconds']} s ({runtime.device}, {runtime.precision})")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main, __doc__)
