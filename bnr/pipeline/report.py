"""``metrics/report.md``: the page a user reads first, built only from what ``metrics/`` holds.

Sections: the chain (seeds M* at the best threshold -> random walk -> CRF on the train split,
then the segmenter on val; the fully supervised segmenter when ``metrics/fully_supervised.json``
exists), each figure with its split, setting, all-background count and a verdict computed from
the per-class IoUs; the per-class table of every step; pictures (the threshold curve and the
training curves drawn here by :mod:`bnr.pipeline.charts`, the overlays written by eval_seeds and
evaluate, as relative links); the experiments (mean ± std per arm,
:mod:`bnr.pipeline.report_experiments`); provenance (:mod:`bnr.pipeline.report_provenance`).

Paper values are the headline table of ``REFERENCE.md`` (TransCAM baseline and BNR); the
synthetic dataset has no paper number, so the VOC 2012 chain is shown there for scale only.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnr.errors import BnrError
from bnr.pipeline import charts
from bnr.pipeline.report_experiments import experiments_section
from bnr.pipeline.report_provenance import protocol_lines, provenance_section, read_protocols

# Paper headline numbers (mIoU %), REFERENCE.md. None = the paper reports no number there.
PAPER: dict[str, dict[str, dict[str, float | None]]] = {
    "voc2012": {
        "TransCAM": {"seeds": 64.9, "random_walk": None, "crf": 70.2, "val": 69.3,
                     "test": 69.6},
        "BNR": {"seeds": 66.2, "random_walk": None, "crf": 71.3, "val": 70.5, "test": 71.1},
    },
    "coco2014": {
        "TransCAM": {"seeds": 46.2, "random_walk": None, "crf": 48.7, "val": 45.7,
                     "test": None},
        "BNR": {"seeds": 47.4, "random_walk": None, "crf": 50.6, "val": 45.9, "test": None},
    },
}
FOUND, EMPTY = 20.0, 5.0  # IoU (%) at or above which a class counts as found; below: near-empty


@dataclass(frozen=True)
class Step:
    key: str  # PAPER key
    label: str
    metrics: str  # input name of its metrics JSON
    field: str  # mIoU field in it
    per_class: str  # input name of its per-class CSV
    column: str  # IoU column in that CSV


STEPS = (
    Step("seeds", "Seeds M* (CAM refined by attention)", "seeds", "miou", "seeds_per_class",
         "iou"),
    Step("random_walk", "After random walk", "pseudo_labels", "miou_random_walk",
         "pseudo_labels_per_class", "random_walk"),
    Step("crf", "After random walk + CRF (paper: +PSA)", "pseudo_labels", "miou_crf",
         "pseudo_labels_per_class", "crf"),
    Step("val", "Segmenter on the CRF labels", "segmentation", "miou",
         "segmentation_per_class", "iou"),
)
FULLY = "Fully supervised (segmenter on ground truth)"


def read_json(path: Path | None) -> dict | None:
    """The JSON object at ``path``; None when absent; BnrError when not a JSON object."""
    if path is None or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise BnrError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise BnrError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_per_class(path: Path | None) -> dict[str, dict[str, float]]:
    """``{class: {column: value}}`` of a ``*_per_class.csv`` (the ``mIoU`` row left out)."""
    if path is None or not Path(path).is_file():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and "class" not in rows[0]:
        raise BnrError(f"{path}: no 'class' column (a per-class IoU table has one)")
    out = {}
    for row in rows:
        if row["class"] == "mIoU":
            continue
        out[row["class"]] = {k: float(v) for k, v in row.items() if k != "class" and v != ""}
    return out


def read_fully_supervised(path: Path | None) -> dict | None:
    """``metrics/fully_supervised.json`` (segmenter trained on ground truth), checked; None when
    the file is absent. Schema: ``split``, ``miou_mean``, ``miou_std``, ``runs`` (``seed``,
    ``miou``, ``per_class``: ``{class: IoU}``), ``note``."""
    data = read_json(path)
    if data is None:
        return None
    for key in ("split", "miou_mean", "miou_std", "runs"):
        if key not in data:
            raise BnrError(f"{path}: no {key!r} (expected split, miou_mean, miou_std, runs, note)")
    if not isinstance(data["runs"], list) or not data["runs"]:
        raise BnrError(f"{path}: 'runs' must be a non-empty list of {{seed, miou, per_class}}")
    return data


def verdict(ious: Mapping[str, float], predicted: Mapping[str, float] | None = None) -> str:
    """One line a reader can trust, from the per-class IoUs (background first) and, when known,
    the predicted pixels per class."""
    objects = {c: v for c, v in ious.items() if c != "background"}
    if not objects:
        return "no per-class IoUs recorded"
    if all(v == 0 for v in objects.values()):
        if predicted and all(predicted.get(c, 0) == 0 for c in objects):
            return "predicts background everywhere (no object pixel predicted)"
        return "finds no object: every object class IoU is 0"
    found = [c for c, v in objects.items() if v >= FOUND]
    empty = [f"{c} {v:.1f}" for c, v in objects.items() if v < EMPTY]
    best = max(objects, key=objects.get)
    text = f"finds {len(found)} of {len(objects)} object classes (IoU ≥ {FOUND:g}); best {best} " \
           f"{objects[best]:.1f}"
    return text + (f"; near-empty (IoU < {EMPTY:g}): {', '.join(empty)}" if empty else "")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def step_setting(step: Step, metrics: dict, protocols: dict) -> str:
    """How the step's figure was obtained, in a few words (threshold, walk score, CRF, scales)."""
    proto = protocols.get(step.metrics, {})
    if step.key == "seeds":
        best = metrics.get("seeds", {}).get("best_threshold")
        sweep = proto.get("thresholds")
        text = "-" if best is None else f"background threshold {best:.2f} (best"
        if best is not None:
            text += (f" of {sweep[0]:.2f}..{sweep[1]:.2f}" if sweep else "") + ", picked on " \
                "these images)"
        return text
    if step.key == "random_walk":
        score = proto.get("bg_score")
        if score is None:
            return "-"
        same = " (the seed threshold)" if proto.get("walk_background") == "seed_threshold" else ""
        scale = f", image and CAMs {proto['walk_scale']}x" if proto.get("walk_scale") else ""
        return f"walk background score {score:.2f}{same}{scale}"
    if step.key == "crf":
        crf = proto.get("crf")
        return f"CRF, {crf['iterations']} iterations" if isinstance(crf, dict) else "CRF"
    bits = []
    if proto.get("scales"):
        bits.append("scales " + ", ".join(f"{s:g}" for s in proto["scales"]))
    if proto.get("flip"):
        bits.append("flip")
    if proto.get("crf"):
        bits.append("CRF")
    return "trained on the CRF labels" + (f"; {', '.join(bits)}" if bits else "")


def all_background(step: Step, metrics: dict, per_class: dict) -> str:
    """Images labelled background only, where recorded or implied (no object pixel at all)."""
    if step.key == "random_walk":
        rw = metrics.get("random_walk", {})
        return f"{rw['all_background']} of {rw['images']}" if "all_background" in rw else "-"
    if step.key == "crf":
        pl = metrics.get("pseudo_labels", {})
        if "all_background_images" in pl:
            return f"{pl['all_background_images']} of {pl.get('images_evaluated', '?')}"
        return "-"
    if step.key == "val":
        rows = {c: r for c, r in per_class.items() if c != "background"}
        if rows and all(r.get("pred_pixels", 1) == 0 for r in rows.values()):
            return f"all {metrics.get('segmentation', {}).get('images', '')}".rstrip()
    return "-"


def chain_rows(dataset: str, metrics: dict, protocols: dict, per_class: dict,
               fully: dict | None) -> list[dict]:
    """One dict per row of the chain table (see :func:`chain_table`)."""
    rows = []
    for step in STEPS:
        table = per_class.get(step.per_class, {})
        ious = {c: r[step.column] for c, r in table.items() if step.column in r}
        predicted = None
        if step.key == "val":
            predicted = {c: r["pred_pixels"] for c, r in table.items() if "pred_pixels" in r}
        if step.key == "crf":
            predicted = {c: r["crf_pred_pixels"] for c, r in table.items()
                         if "crf_pred_pixels" in r}
        rows.append({
            "key": step.key, "label": step.label,
            "split": protocols.get(step.metrics, {}).get("split", "-"),
            "setting": step_setting(step, metrics, protocols),
            "ours": _fmt(metrics.get(step.metrics, {}).get(step.field)),
            "value": metrics.get(step.metrics, {}).get(step.field),
            "all_background": all_background(step, metrics, table),
            "verdict": verdict(ious, predicted) if ious else "no per-class IoUs recorded",
        })
    if fully is not None:
        runs = fully["runs"]
        mean = {c: sum(r["per_class"].get(c, 0.0) for r in runs) / len(runs)
                for c in runs[0].get("per_class", {})}
        rows.append({"key": "fully", "label": FULLY, "split": fully["split"],
                     "setting": "trained on ground-truth masks; seed" + "s" * (len(runs) > 1)
                                + " " + ", ".join(str(r["seed"]) for r in runs),
                     "ours": (f"{fully['miou_mean']:.1f} ± {fully['miou_std']:.1f} "
                              f"(n={len(runs)})" if len(runs) > 1
                              else f"{fully['miou_mean']:.1f} (n=1)"),
                     "value": fully["miou_mean"],
                     "all_background": "-",
                     "verdict": verdict(mean) if mean else "no per-class IoUs recorded"})
    return rows


def chain_table(dataset: str, rows: Sequence[dict]) -> str:
    """Markdown table of the chain: split, setting, ours, all-background images, verdict, and
    the paper's figures (for scale only on a dataset the paper has no number for)."""
    paper = PAPER.get(dataset)
    voc = paper is None
    ref = PAPER["voc2012"] if voc else paper
    names = ("paper TransCAM, VOC 2012 (scale only)", "paper BNR, VOC 2012 (scale only)") \
        if voc else ("paper TransCAM", "paper BNR", "ours − paper BNR")
    head = ["Step", "split", "setting", "ours (mIoU %)", "all-background images", "verdict",
            *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        t = ref["TransCAM"].get(row["key"])
        b = ref["BNR"].get(row["key"])
        cells = [row["label"], row["split"], row["setting"], row["ours"], row["all_background"],
                 row["verdict"], _fmt(t), _fmt(b)]
        if not voc:
            cells.append("-" if row["value"] is None or b is None
                         else f"{float(row['value']) - b:+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    if not voc and ref["BNR"]["test"] is not None:
        cells = ["Segmenter, test (evaluation server)", "test", "-", "-", "-", "-",
                 _fmt(ref["TransCAM"]["test"]), _fmt(ref["BNR"]["test"]), "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_table(per_class: dict, fully: dict | None) -> str:
    """Markdown table: one row per class, IoU (%) of every step (and of the fully supervised
    segmenter, mean over its runs)."""
    columns = [(f"{s.label} ({'val' if s.key == 'val' else 'train'})", per_class.get(
        s.per_class, {}), s.column) for s in STEPS]
    classes: list[str] = []
    for _, table, _ in columns:
        classes += [c for c in table if c not in classes]
    if fully is not None:
        runs = fully["runs"]
        mean = {c: {"iou": sum(r["per_class"].get(c, 0.0) for r in runs) / len(runs)}
                for c in runs[0].get("per_class", {})}
        columns.append((f"fully supervised ({fully['split']}, mean of {len(runs)})", mean, "iou"))
        classes += [c for c in mean if c not in classes]
    lines = ["| class | " + " | ".join(c[0] for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for name in classes:
        cells = [_fmt(table.get(name, {}).get(col)) for _, table, col in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def link(target: Path, report: Path) -> str:
    """``target`` relative to the report's folder, with forward slashes (a Markdown link)."""
    return Path(os.path.relpath(Path(target).resolve(), Path(report).resolve().parent)).as_posix()


TRAINING = (  # stage, curves input, losses drawn together
    ("train_cam", "cam_curves", ("loss", "loss_cls", "loss_bnr")),
    ("train_affinity", "affinity_curves", ("loss", "bg", "fg", "neg")),
    ("train_segmenter", "segmenter_curves", ("loss",)),
)


def _tsv(folder: Path, name: str) -> list[tuple[float, float]]:
    path = Path(folder) / "train" / f"{name}.tsv"
    return charts.read_columns(path, "step", "\t").get(name, []) if path.is_file() else []


def draw_figures(paths: Mapping[str, Path], metrics: dict, folder: Path
                 ) -> list[tuple[str, str]]:
    """The threshold curve, one loss plot per training stage and the learning rates, as PNGs
    in ``folder``; ``[(caption, file name)]`` of those drawn (a missing source draws nothing)."""
    folder.mkdir(parents=True, exist_ok=True)
    drawn = []
    sweep = paths.get("threshold_curve")
    if sweep is not None and Path(sweep).is_file():
        curve = charts.read_columns(Path(sweep), "threshold").get("miou", [])
        seeds = metrics.get("seeds", {})
        mark = (seeds["best_threshold"], seeds["miou"]) if {"best_threshold", "miou"} <= \
            seeds.keys() else None
        chart = charts.Chart("Seed mIoU (M*) vs hard background threshold (paper Fig. 4)",
                             "background threshold", "mIoU (%)",
                             (charts.Series("mIoU", tuple(curve)),), mark=mark)
        drawn.append(("Seed mIoU against the background threshold",
                      _draw(chart, folder, "seeds_threshold.png")))
    rates = []
    for stage, key, losses in TRAINING:
        curves = paths.get(key)
        if curves is None or not Path(curves).is_dir():
            continue
        series = tuple(charts.Series(n, tuple(p)) for n in losses if (p := _tsv(curves, n)))
        if series:
            chart = charts.Chart(f"{stage}: training losses", "step", "loss", series)
            drawn.append((f"{stage} losses", _draw(chart, folder, f"{stage}_losses.png")))
        if lr := _tsv(curves, "lr"):
            rates.append(charts.Series(stage, tuple(lr)))
    if rates:
        chart = charts.Chart("Learning rate per training stage (log scale)", "step",
                             "learning rate", tuple(rates), log_y=True)
        drawn.append(("learning rates", _draw(chart, folder, "learning_rates.png")))
    return drawn


def _draw(chart: charts.Chart, folder: Path, name: str) -> str:
    charts.write_chart(chart, folder / name)
    return name


def pictures_section(paths: Mapping[str, Path], drawn: list[tuple[str, str]], figures: Path,
                     report: Path) -> list[str]:
    """Markdown lines embedding the drawn figures (file names in ``figures``) and the overlays
    (relative links)."""
    parts = ["## Pictures", ""]
    for caption, name in drawn:
        parts += [f"![{caption}]({link(figures / name, report)})", ""]
    for key, title, what in (
            ("seed_overlays", "Seeds (train)",
             "image | ground truth | M* | seeds | attention"),
            ("segmentation_overlays", "Segmentation (val)",
             "image | ground truth | prediction")):
        folder = paths.get(key)
        pngs = sorted(Path(folder).glob("*.png")) if folder and Path(folder).is_dir() else []
        if not pngs:
            continue
        parts += [f"### {title}: {what}", ""]
        parts += [f"![{title} {p.stem}]({link(p, report)})" for p in pngs]
        parts.append("")
    return parts


def build_report(dataset: str, paths: Mapping[str, Path], report: Path,
                 figures: Path | None = None, exp_json: Any = None, exp_note: str = "",
                 draw_into: Path | None = None) -> str:
    """The whole ``report.md`` for ``dataset`` from the input files ``paths`` (names as the
    report stage's inputs: ``seeds``, ``seeds_per_class``, ...); ``report`` is where it goes
    (links are relative to it); figures, linked as in ``figures``, are drawn there or into
    ``draw_into`` (a temporary folder that becomes ``figures``) when given."""
    metrics = {k: d for k in ("seeds", "pseudo_labels", "random_walk", "segmentation")
               if (d := read_json(paths.get(k))) is not None}
    missing = [f"{paths[k]} not found (its stage has not run)" for k in
               ("seeds", "pseudo_labels", "segmentation") if k in paths and k not in metrics]
    per_class = {s.per_class: read_per_class(paths.get(s.per_class)) for s in STEPS}
    fully = read_fully_supervised(paths.get("fully_supervised"))
    protocols, notes = read_protocols({k: paths[k] for k in metrics})
    rows = chain_rows(dataset, metrics, protocols, per_class, fully)
    parts = [f"# bnr report: {dataset}", ""]
    if dataset in PAPER:
        parts.append("mIoU (%) at every step, ours next to the paper's headline table. The "
                     "paper has no separate number after the random walk alone.")
    else:
        parts.append(f"mIoU (%) at every step. The paper has no number for the {dataset} "
                     "dataset (it reports PASCAL VOC 2012 and MS COCO 2014 only): its VOC 2012 "
                     "figures are shown for scale, not as a target.")
    parts += ["Seeds, random walk and CRF are scored on the images they label (train split); "
              "the segmenter on val, so its figure is not a change from the CRF's.",
              f"Verdicts: a class is found at IoU ≥ {FOUND:g} and near-empty below "
              f"{EMPTY:g}.", "", chain_table(dataset, rows), ""]
    parts += ["## Per class (IoU %)", "", per_class_table(per_class, fully), ""]
    if fully and fully.get("note"):
        parts += [f"Fully supervised: {fully['note']}", ""]
    if figures is not None:
        drawn = draw_figures(paths, metrics, draw_into or figures)
        parts += pictures_section(paths, drawn, figures, report)
    parts += ["## Experiments", ""]
    if exp_json is None and not exp_note:
        parts.append("Not read here: `bnr experiments --out metrics/experiments.md` tables "
                     "`dvc exp show` as mean ± std over seeds per arm.")
    else:
        parts += ["As `dvc exp show` listed them when this report was written (DVC does not "
                  "re-run the report when an experiment is added: `dvc repro -f report`).", "",
                  *experiments_section(exp_json, exp_note)]
    parts += ["", *provenance_section(paths, protocols)]
    proto = protocol_lines({f"{k}.json" if not str(paths[k]).endswith(".json") else
                            Path(paths[k]).name: p for k, p in protocols.items()})
    if proto:
        parts += ["## How each number was obtained", "",
                  "From the protocol file next to each metrics file (the full params, git "
                  "commit and library versions are there).", "", *proto, ""]
    if missing or notes:
        parts += ["## Missing", "", *(f"- {n}" for n in [*missing, *notes]), ""]
    return "\n".join(parts).rstrip() + "\n"
