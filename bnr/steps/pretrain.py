"""Stage pretrain: the synthetic demo's "ImageNet" (classification on a generated world).

Trains the CAM backbone and the AffinityNet / segmenter backbone on ``bnr.data.pretrain_world``
and writes them in the real checkpoint layouts (official Conformer, converted ResNet-38 .pth),
which the ``*.pretrained: auto`` keys load for the synthetic dataset (bnr/weights/pretrained.py). A
one-time cost: its outputs are committed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from bnr.config.params import Params
from bnr.pipeline.metrics_files import write_metrics
from bnr.pipeline.protocol import protocol_record
from bnr.runtime import seed_everything, start_runtime
from bnr.weights.pretrain import run_pretrain


@dataclass(frozen=True)
class Inputs:
    """Nothing but params: the world is generated."""


@dataclass(frozen=True)
class Outputs:
    conformer: Path = field(metadata={"help": "Conformer weights, official layout"})
    resnet38: Path = field(metadata={"help": "ResNet-38d weights, converted .pth layout"})
    metrics: Path = field(metadata={"help": "held-out mAP / top-1 (JSON)"})


def run(cfg: Params, inputs: Inputs, outputs: Outputs) -> dict:
    """Pretrain both backbones; write their weights and the held-out scores."""
    pre = cfg.pretrain
    seed_everything(pre.seed)
    runtime = start_runtime(cfg.runtime)
    summary = run_pretrain(pre, outputs.conformer, outputs.resnet38, runtime=runtime)
    net = {"conformer": summary["conformer"], "resnet38": summary["resnet38"]}
    numbers = {
        "conformer_map": net["conformer"]["map"],
        "conformer_top1": net["conformer"]["top1_single_object"],
        "resnet38_map": net["resnet38"]["map"],
        "resnet38_top1": net["resnet38"]["top1_single_object"],
    }
    write_metrics(outputs.metrics, numbers, protocol_record(
        cfg, dataset="pretrain_world", split="val", pretrain=asdict(pre),
        runtime=runtime.record(), classes=summary["classes"], **net))
    return numbers
