"""``metrics/report.md``: our numbers next to the paper's at every step, plus the experiments.

Steps (mIoU %): seeds (``metrics/seeds.json`` ``miou``), after the random walk and after the
CRF (``metrics/pseudo_labels.json`` ``miou_random_walk`` / ``miou_crf``; the paper's "+PSA"
column is random walk + CRF, so it sits on the CRF row), segmentation on the val split
(``metrics/segmentation.json`` ``miou``). Paper values are the headline table of
``REFERENCE.md`` (TransCAM baseline and BNR); the synthetic dataset has no paper number. How
each number was obtained comes from the protocol file next to its metrics file
(``metrics/seeds.protocol.json``, ...; :mod:`bnr.pipeline.metrics_files`).

The experiments (``bnr experiments``, outside the pipeline: DVC cannot see them as a stage
input) come from ``dvc exp show --json`` (:func:`dvc_experiments`, via subprocess; a failure
becomes a note, never an error): mean ± std over seeds per arm
(:func:`bnr.pipeline.experiments.arm_summary`), then one row per experiment. Everything else is
plain functions of dicts, testable without dvc.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bnr.errors import BnrError
from bnr.pipeline.experiments import arm_summary, flatten_params
from bnr.pipeline.metrics_files import protocol_path, read_protocol

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

STEPS = (  # key, label, metrics file, key in it
    ("seeds", "Seeds (CAM, best threshold)", "seeds.json", "miou"),
    ("random_walk", "After random walk", "pseudo_labels.json", "miou_random_walk"),
    ("crf", "After random walk + CRF (paper: +PSA)", "pseudo_labels.json", "miou_crf"),
    ("val", "Segmentation, val", "segmentation.json", "miou"),
)

EXPERIMENT_COLUMNS = (  # header, metrics file, key
    ("seeds", "metrics/seeds.json", "miou"),
    ("random walk", "metrics/pseudo_labels.json", "miou_random_walk"),
    ("CRF", "metrics/pseudo_labels.json", "miou_crf"),
    ("segmentation", "metrics/segmentation.json", "miou"),
)
EXPERIMENT_PARAMS = ("dataset", "method", "noise_scale", "seed")


def step_metrics_files(metrics_dir: Path) -> dict[str, Path]:
    """The step metrics files the report reads, under their usual names in ``metrics_dir``."""
    return {name: Path(metrics_dir) / name for name in sorted({s[2] for s in STEPS})}


def read_metrics(files: Mapping[str, Path]) -> tuple[dict[str, dict], list[str]]:
    """The step metrics ``files`` (``seeds.json`` -> its path) that exist and parse, and notes
    for the rest."""
    out, notes = {}, []
    for name in sorted({s[2] for s in STEPS}):
        path = Path(files[name])
        if not path.is_file():
            notes.append(f"{path} not found (its stage has not run)")
            continue
        try:
            out[name] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            notes.append(f"{path}: not valid JSON ({exc})")
    return out, notes


def read_protocols(files: Mapping[str, Path], names: Sequence[str]
                   ) -> tuple[dict[str, dict], list[str]]:
    """The protocol files next to the metrics files ``names`` (keys of ``files``), and notes
    for those missing or unreadable."""
    out, notes = {}, []
    for name in names:
        try:
            out[name] = read_protocol(files[name])
        except BnrError as exc:
            notes.append(str(exc))
    return out, notes


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def step_table(dataset: str, metrics: dict[str, dict]) -> str:
    """Markdown table: one row per step, ours next to the paper's TransCAM and BNR. A dataset
    the paper has no number for gets the change from the step before and the paper's VOC 2012
    chain beside it: the shape of the chain (each step improves on the seeds), not a target."""
    paper = PAPER.get(dataset)
    head = "| Step | ours |"
    rule = "|---|---|"
    if paper:
        head += " paper TransCAM | paper BNR | ours - paper BNR |"
        rule += "---|---|---|"
    else:
        head += (" change from the step before | no paper number: paper TransCAM, VOC 2012 |"
                 " paper BNR, VOC 2012 |")
        rule += "---|---|---|"
    rows = [head, rule]
    before = None
    for key, label, name, field in STEPS:
        ours = metrics.get(name, {}).get(field)
        row = f"| {label} | {_fmt(ours)} |"
        if paper:
            t, b = paper["TransCAM"][key], paper["BNR"][key]
            diff = "-" if ours is None or b is None else f"{float(ours) - b:+.1f}"
            row += f" {_fmt(t)} | {_fmt(b)} | {diff} |"
        else:
            change = "-" if ours is None or before is None else f"{float(ours) - before:+.1f}"
            voc = PAPER["voc2012"]
            row += f" {change} | {_fmt(voc['TransCAM'][key])} | {_fmt(voc['BNR'][key])} |"
        before = before if ours is None else float(ours)
        rows.append(row)
    if paper:
        t, b = paper["TransCAM"]["test"], paper["BNR"]["test"]
        if b is not None:
            rows.append(f"| Segmentation, test (evaluation server) | - | {_fmt(t)} | {_fmt(b)} "
                        "| - |")
    return "\n".join(rows)


def protocol_lines(protocols: dict[str, dict]) -> list[str]:
    """One line per metrics file: how its number was obtained (split, scales, flip, CRF, ...),
    from its protocol file (``{metrics file name: protocol}``)."""
    lines = []
    for name, proto in sorted(protocols.items()):
        bits = [f"{k}={proto[k]}" for k in ("dataset", "split", "images", "ground_truth",
                                           "scales", "flip", "method", "noise_scale", "seed",
                                           "server_archive")
                if k in proto]
        if "crf" in proto:
            bits.append(f"crf={'yes' if proto['crf'] else 'no'}")
        if "thresholds" in proto:
            bits.append("threshold sweep {:.2f}..{:.2f} step {:g}".format(*proto["thresholds"]))
        if proto.get("sweep_note"):
            bits.append(f"**warning: {proto['sweep_note']}**")
        commit = (proto.get("git") or {}).get("commit")
        if commit:
            bits.append(f"commit {commit[:7]}" + (" (dirty)" if proto["git"].get("dirty") else ""))
        lines.append(f"- `{name}` (`{protocol_path(name).name}`): "
                     + (", ".join(bits) if bits else "no fields recorded"))
    return lines


# ----------------------------------------------------------------------------------------------
# Experiments (dvc exp show --json)


def _dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def experiment_rows(exp_json: Any) -> list[dict]:
    """Flatten ``dvc exp show --json`` (dvc 3: a list of commits, each with ``data`` and
    ``experiments`` -> ``revs``, with the run's ``executor`` state) into rows: name, state
    (``success`` unless dvc says queued / running / failed), params of
    :data:`EXPERIMENT_PARAMS`, all params flattened (``params``), and the mIoU columns of
    :data:`EXPERIMENT_COLUMNS` (None where absent or failed)."""
    rows: list[dict] = []

    def visit(entry: Any, state: str) -> None:
        if not isinstance(entry, dict):
            return
        data = entry.get("data")
        if isinstance(data, dict):
            params = _dig(data, "params", "params.yaml", "data") or {}
            metrics = data.get("metrics") or {}
            rev = str(entry.get("rev", ""))
            row = {"name": entry.get("name") or (rev[:7] if len(rev) == 40 else rev),
                   "state": state, "params": flatten_params(params)}
            for key in EXPERIMENT_PARAMS:
                row[key] = params.get(key)
            for header, path, key in EXPERIMENT_COLUMNS:
                row[header] = _dig(metrics, path, "data", key)
            rows.append(row)
        for exp in entry.get("experiments") or []:
            exp = exp or {}
            run_state = _dig(exp, "executor", "state") or "success"
            for rev in exp.get("revs") or []:
                visit(rev, str(run_state))

    for entry in exp_json if isinstance(exp_json, list) else [exp_json]:
        visit(entry, "success")
    return rows


def _mean_std(cell: Any) -> str:
    if cell is None:
        return "-"
    mean, std, n = cell
    return f"{mean:.1f}" + ("" if std is None else f" ± {std:.1f}") + f" ({n})"


def arms_table(rows: Sequence[dict]) -> str:
    """Markdown table: mean ± std (number of seeds) of each step mIoU per arm, over the
    finished experiments of ``rows`` (:func:`bnr.pipeline.experiments.arm_summary`)."""
    done = [r for r in rows if r.get("state", "success") == "success"]
    steps = [c[0] for c in EXPERIMENT_COLUMNS]
    arms = arm_summary(done, steps)
    cols = ["arm", "method", "noise_scale", "other params", "seed", *steps]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for arm in arms:
        seeds = ",".join(str(s) for s in arm["seed_values"])
        cells = [arm["arm"], str(arm["method"]), str(arm["noise_scale"]), arm["other"] or "-",
                 seeds, *(_mean_std(arm[s]) for s in steps)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def experiments_table(rows: Sequence[dict]) -> str:
    """Markdown table of experiment rows."""
    cols = ["name", *EXPERIMENT_PARAMS, *(c[0] for c in EXPERIMENT_COLUMNS)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append("-" if v is None else (f"{v:.1f}" if isinstance(v, float)
                                                 and c not in EXPERIMENT_PARAMS else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


Runner = Callable[..., Any]


def dvc_experiments(runner: Runner = subprocess.run, timeout: float = 120) -> tuple[Any, str]:
    """``(parsed JSON, "")`` of ``dvc exp show --json``, or ``(None, note)`` if it fails."""
    try:
        done = runner(["dvc", "exp", "show", "--json"], capture_output=True, text=True,
                      timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"`dvc exp show --json` could not run ({type(exc).__name__}: {exc})"
    if done.returncode != 0:
        err = (done.stderr or "").strip().splitlines()
        return None, (f"`dvc exp show --json` failed (exit {done.returncode}"
                      + (f": {err[-1]}" if err else "") + ")")
    try:
        return json.loads(done.stdout), ""
    except json.JSONDecodeError as exc:
        return None, f"`dvc exp show --json` printed no valid JSON ({exc})"


# ----------------------------------------------------------------------------------------------
# The report


def build_report(
    dataset: str,
    files: Mapping[str, Path],
    exp_json: Any = None,
    exp_note: str = "",
) -> str:
    """The whole ``report.md`` text for ``dataset`` from the step metrics ``files``
    (:func:`step_metrics_files`) and the experiments."""
    metrics, notes = read_metrics(files)
    parts = [f"# bnr report: {dataset}", ""]
    parts.append("mIoU (%) at every step of the pipeline, ours next to the paper's.")
    if dataset in PAPER:
        parts.append("Paper: headline table (TransCAM baseline and BNR). Seeds and +PSA are on "
                     "the train split, segmentation on val; the paper has no separate number "
                     "after the random walk alone.")
    else:
        parts.append(f"The paper has no number for the {dataset} dataset (it reports PASCAL VOC "
                     "2012 and MS COCO 2014 only); its VOC 2012 chain is shown beside ours for "
                     "the shape of the chain (each step after the seeds improves on them), not "
                     "as a target.")
    parts += ["", step_table(dataset, metrics), ""]
    protocols, missing = read_protocols(files, sorted(metrics))
    folders = sorted({str(Path(files[name]).parent) for name in metrics})
    notes += missing
    proto = protocol_lines(protocols)
    if proto:
        parts += ["## How each number was obtained", "",
                  "From the protocol file next to each metrics file in "
                  f"`{', '.join(folders)}` (the full params, git commit and library "
                  "versions are there).", "", *proto, ""]
    if notes:
        parts += ["## Missing", "", *(f"- {n}" for n in notes), ""]
    parts += ["## Experiments", ""]
    if exp_json is None and not exp_note:
        parts.append("Experiments are compared outside the pipeline (DVC cannot see them as a "
                     "stage input): `bnr experiments --out metrics/experiments.md` tables "
                     "`dvc exp show` as mean ± std over seeds per arm.")
    else:
        parts += experiments_section(exp_json, exp_note)
    return "\n".join(parts).rstrip() + "\n"


def experiments_section(exp_json: Any, exp_note: str = "") -> list[str]:
    """Markdown lines: mIoU per arm (mean ± std over seeds) and per experiment, from
    ``dvc exp show --json`` (``exp_note``: why it could not be read)."""
    if exp_note:
        return [f"Note: {exp_note}."]
    rows = experiment_rows(exp_json) if exp_json is not None else []
    done = [r for r in rows if r["state"] == "success"]
    if len(done) <= 1:
        return ["Only the workspace: no further experiments to compare "
                "(`dvc exp run -S seed=1` adds one)."]
    parts = ["mIoU (%) per arm (runs whose params differ only in `seed`): mean ± std over "
             "seeds (number of seeds), from `dvc exp show`.", "", arms_table(done), "",
             "Each experiment:", "", experiments_table(done)]
    if len(rows) > len(done):
        parts += ["", f"({len(rows) - len(done)} queued, running or failed experiments "
                  "left out.)"]
    return parts
