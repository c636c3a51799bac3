"""Stage report: the page a user reads first (``metrics/report.md``): the chain with each
figure's split, setting and verdict, per-class tables, pictures, the experiments and the
provenance, all from the metrics files of the run. The figures it embeds (threshold curve,
training curves) are drawn into its own folder; the overlays are linked where their stages
wrote them. ``fully_supervised`` may be absent: the report then has no fully supervised row."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from bnr.config.params import Params
from bnr.io import atomic_path, write_text
from bnr.pipeline.report import build_report
from bnr.pipeline.report_experiments import dvc_experiments


def _in(help_text: str) -> Path:
    return field(metadata={"help": help_text})


@dataclass(frozen=True)
class Inputs:
    seeds: Path = _in("eval_seeds' metrics (its protocol beside it)")
    seeds_per_class: Path = _in("eval_seeds' per-class IoU table")
    threshold_curve: Path = _in("eval_seeds' threshold sweep (CSV: threshold, miou)")
    seed_overlays: Path = _in("eval_seeds' overlays (folder)")
    pseudo_labels: Path = _in("crf's metrics (its protocol beside it)")
    pseudo_labels_per_class: Path = _in("crf's per-class IoU table")
    random_walk: Path = _in("random_walk's metrics (all-background count, time)")
    segmentation: Path = _in("evaluate's metrics (its protocol beside it)")
    segmentation_per_class: Path = _in("evaluate's per-class IoU table")
    segmentation_overlays: Path = _in("evaluate's overlays (folder)")
    train_cam: Path = _in("train_cam's metrics (time, protocol)")
    infer_seeds: Path = _in("infer_seeds' metrics (time, protocol)")
    train_affinity: Path = _in("train_affinity's metrics (time, protocol)")
    train_segmenter: Path = _in("train_segmenter's metrics (time, protocol)")
    cam_curves: Path = _in("train_cam's dvclive plots folder")
    affinity_curves: Path = _in("train_affinity's dvclive plots folder")
    segmenter_curves: Path = _in("train_segmenter's dvclive plots folder")
    fully_supervised: Path = _in("the segmenter trained on ground truth (JSON; may be absent)")


@dataclass(frozen=True)
class Outputs:
    report: Path = field(metadata={"help": "the report (markdown)"})
    figures: Path = field(metadata={"help": "the charts the report embeds (folder of PNGs)"})


def run(cfg: Params, inputs: Inputs, outputs: Outputs) -> dict:
    """Write the report of ``cfg.dataset`` and its figures."""
    paths = {f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)}
    exp_json, note = dvc_experiments(timeout=60)
    with atomic_path(outputs.figures) as tmp:
        text = build_report(cfg.dataset, paths, outputs.report, outputs.figures, exp_json,
                            note, draw_into=tmp)
    write_text(outputs.report, text)
    print(text)
    return {}
