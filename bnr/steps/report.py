"""Stage report: our mIoU next to the paper's at every step and how each number was obtained.
It reads only its declared inputs; the DVC experiments are tabled outside the pipeline by
``bnr experiments``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bnr.config.params import Params
from bnr.io import write_text
from bnr.pipeline.report import build_report


@dataclass(frozen=True)
class Inputs:
    seeds: Path = field(metadata={"help": "eval_seeds' metrics (its protocol beside it)"})
    pseudo_labels: Path = field(metadata={"help": "crf's metrics (its protocol beside it)"})
    segmentation: Path = field(metadata={"help": "evaluate's metrics (its protocol beside it)"})


@dataclass(frozen=True)
class Outputs:
    report: Path = field(metadata={"help": "the report (markdown)"})


def run(cfg: Params, inputs: Inputs, outputs: Outputs) -> dict:
    """Write the report of ``cfg.dataset`` from the three step metrics files."""
    text = build_report(cfg.dataset, {"seeds.json": inputs.seeds,
                                      "pseudo_labels.json": inputs.pseudo_labels,
                                      "segmentation.json": inputs.segmentation})
    write_text(outputs.report, text)
    print(text)
    return {}
