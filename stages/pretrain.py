"""Stage pretrain: the synthetic demo's "ImageNet" (classification on a generated world).

Trains the CAM backbone and the AffinityNet / segmenter backbone on ``bnr.data.pretrain_world``
and writes them in the real checkpoint layouts (official Conformer, converted ResNet-38 .pth),
which ``train_cam.pretrained`` / ``train_affinity.pretrained`` / ``train_segmenter.pretrained``
``auto`` load for the synthetic dataset. A one-time cost: its outputs are committed.
"""

from dataclasses import asdict
from pathlib import Path

from bnr.config import Params
from bnr.io import write_json
from bnr.pretrain import run_pretrain
from bnr.pretrained import PRETRAINED_FILES
from bnr.protocol import protocol_record
from bnr.runtime import start_runtime
from bnr.stage import run_stage, seed_everything


def main(params: Params) -> None:
    cfg = params.pretrain
    seed_everything(cfg.seed)
    runtime = start_runtime(params.runtime)
    summary = run_pretrain(cfg, Path(PRETRAINED_FILES["conformer"]),
                           Path(PRETRAINED_FILES["resnet38"]), runtime=runtime)
    write_json("metrics/pretrain.json", {
        **summary,
        "protocol": protocol_record(params, dataset="pretrain_world", split="val",
                                    pretrain=asdict(cfg), runtime=runtime.record()),
    })


if __name__ == "__main__":
    run_stage(main, __doc__)
