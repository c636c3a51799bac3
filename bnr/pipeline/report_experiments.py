"""The experiments section of ``metrics/report.md`` and of ``bnr experiments``.

The experiments come from ``dvc exp show --json`` (:func:`dvc_experiments`, via subprocess; a
failure becomes a note, never an error): mean ± std over seeds per arm
(:func:`bnr.pipeline.experiments.arm_summary`), then one row per experiment. Everything else is
plain functions of dicts, testable without dvc.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from bnr.pipeline.experiments import arm_summary, flatten_params

EXPERIMENT_COLUMNS = (  # header, metrics file, key
    ("seeds", "metrics/seeds.json", "miou"),
    ("random walk", "metrics/pseudo_labels.json", "miou_random_walk"),
    ("CRF", "metrics/pseudo_labels.json", "miou_crf"),
    ("segmentation", "metrics/segmentation.json", "miou"),
)
EXPERIMENT_PARAMS = ("dataset", "method", "noise_scale", "seed")


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
