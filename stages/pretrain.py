"""Stage pretrain: the synthetic demo's "ImageNet" (classification on a generated world).

Trains the CAM backbone and the AffinityNet / segmenter backbone on ``bnr.data.pretrain_world``
and writes them in the real checkpoint layouts (official Conformer, converted ResNet-38 .pth),
which ``train_cam.pretrained`` / ``train_affinity.pretrained`` / ``train_segmenter.pretrained``
``auto`` load for the synthetic dataset. A one-time cost: its outputs are committed.
"""

from dataclasses import asdict
from pathlib import Path

from bnr.config import Params
from bnr.metrics_files import write_metrics
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
    net = {"conformer": summary["conformer"], "resnet38": summary["resnet38"]}
    write_metrics("metrics/pretrain.json", {
        "conformer_map": net["conformer"]["map"],
        "conformer_top1": net["conformer"]["top1_single_object"],
        "resnet38_map": net["resnet38"]["map"],
        "resnet38_top1": net["resnet38"]["top1_single_object"],
    }, protocol_record(params, dataset="pretrain_world", split="val", pretrain=asdict(cfg),
                       runtime=runtime.record(), classes=summary["classes"], **net))

if __name__ == "__main__":
    run_stage(main, __doc__)
