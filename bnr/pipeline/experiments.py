"""Summaries of DVC experiments: the paper's Table 5 arms, mean and spread over seeds.

:func:`arm_summary` groups experiment rows (``bnr.pipeline.report.experiment_rows``) into arms: runs
whose params are equal except ``seed``. :func:`read_exp_csv` / :func:`arm_table` do the same for the
seed mIoU of ``scripts/table5.sh`` from ``dvc exp show --csv``.
"""

from __future__ import annotations

import io
import json
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

ARMS = (
    ("TransCAM (baseline)", {"method": "transcam"}),
    ("BNR without noise", {"method": "bnr", "noise_scale": "none"}),
    ("BNR x1", {"method": "bnr", "noise_scale": 1.0}),
    ("BNR x2", {"method": "bnr", "noise_scale": 2.0}),
)
PAPER_TABLE5 = {"TransCAM (baseline)": 64.9, "BNR without noise": 62.4, "BNR x1": 66.2,
                "BNR x2": 65.3}


def _column(df: pd.DataFrame, name: str) -> str:
    for suffix in (":" + name, "." + name):  # a top-level key before a nested one
        for col in df.columns:
            if col == name or col.endswith(suffix):
                return col
    raise KeyError(f"no column {name!r} in the experiments table (have: {', '.join(df.columns)})")


EXP_SHOW_COLUMNS = ("Experiment|State|metrics/seeds.json:miou$|^method$|^noise_scale$|^seed$|"
                    "infer_seeds.source$")  # dvc exp show --csv --drop '.*' --keep <this>


def read_exp_csv(text: str) -> pd.DataFrame:
    """``dvc exp show --csv`` output -> a frame with method, noise_scale, seed, source, miou.

    Run it with ``--drop '.*' --keep EXP_SHOW_COLUMNS``: dvc prefixes only the first column of
    each file with the file name, so unrelated keys (``download.synthetic.seed``) would clash.
    """
    df = pd.read_csv(io.StringIO(text))
    if "State" in df:  # finished experiments only (queued/running rows carry stale metrics)
        df = df[df["State"] == "Success"]
    out = pd.DataFrame({
        "experiment": df[_column(df, "Experiment")] if "Experiment" in df else df.index,
        "method": df[_column(df, "method")],
        "noise_scale": df[_column(df, "noise_scale")].map(_noise_scale),
        "seed": pd.to_numeric(df[_column(df, "seed")], errors="coerce"),
        "source": df[_column(df, "infer_seeds.source")],
        "miou": pd.to_numeric(df[_column(df, "miou")], errors="coerce"),
    })
    return out.dropna(subset=["miou"])


def _noise_scale(value: Any) -> Any:
    """A csv cell of ``noise_scale``: ``none`` kept, a number as a float (1 and 1.0 alike)."""
    return value if value == "none" else pd.to_numeric(value, errors="coerce")


def arm_table(runs: pd.DataFrame, source: str = "transcam") -> pd.DataFrame:
    """Mean, std and count of seed mIoU per Table 5 arm (one row per distinct seed)."""
    runs = runs[runs["source"] == source]
    rows = []
    for name, match in ARMS:
        sel = runs
        for key, value in match.items():
            sel = sel[sel[key] == value] if key != "noise_scale" else sel[
                (sel["method"] == "bnr") & (sel[key] == value)]
        sel = sel.drop_duplicates(subset=["seed"])
        rows.append({
            "arm": name, "runs": len(sel), "seeds": ",".join(str(int(s)) for s in sel["seed"]),
            "miou_mean": round(sel["miou"].mean(), 2) if len(sel) else float("nan"),
            "miou_std": round(sel["miou"].std(ddof=1), 2) if len(sel) > 1 else float("nan"),
            "paper_voc_train": PAPER_TABLE5[name],
        })
    return pd.DataFrame(rows)


def arm_name(method: Any, noise_scale: Any) -> str:
    """The Table 5 name of a (method, noise_scale) pair, else ``method x<noise_scale>``."""
    for name, match in ARMS:
        if match["method"] == method and match.get("noise_scale", noise_scale) == noise_scale:
            return name
    return f"{method} x{noise_scale}"


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"crf": {"iterations": 10}}`` -> ``{"crf.iterations": 10}`` (lists kept whole)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name + "."))
        else:
            flat[name] = value
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _same_number(value: Any) -> Any:
    """1 and 1.0 alike (``dvc exp run -S noise_scale=1`` sets an int)."""
    return float(value) if _is_number(value) else value


def arm_summary(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[dict]:
    """One entry per arm of ``rows``: the runs whose flattened ``params`` are equal except
    ``seed``. For each of ``columns``: ``(mean, std or None, n)`` over distinct seeds (the first
    row of a seed with a number in that column counts; std with ddof=1, None for one seed), or
    None without any number. Each entry also has ``arm`` (:func:`arm_name`), ``method``,
    ``noise_scale``, ``seed_values`` (sorted) and ``other``: the params besides method,
    noise_scale and seed whose values differ between arms, as ``key=value`` text ("" when
    none). Arms without any number are left out; Table 5 arms first, in :data:`ARMS` order."""
    groups: dict[str, dict] = {}
    for row in rows:
        params = dict(row.get("params") or {})
        key = json.dumps({k: _same_number(v) for k, v in params.items() if k != "seed"},
                         sort_keys=True, default=str)
        group = groups.setdefault(key, {"params": params, "values": {c: {} for c in columns}})
        for column in columns:
            value = row.get(column)
            if _is_number(value):
                group["values"][column].setdefault(params.get("seed"), float(value))
    groups = {k: g for k, g in groups.items() if any(g["values"].values())}
    fixed = {"method", "noise_scale", "seed"}
    names = sorted({k for g in groups.values() for k in g["params"]} - fixed)
    varying = [k for k in names if len({json.dumps(_same_number(g["params"].get(k)), default=str)
                                        for g in groups.values()}) > 1]
    order = [name for name, _ in ARMS]
    out = []
    for group in groups.values():
        params = group["params"]
        entry: dict[str, Any] = {
            "arm": arm_name(params.get("method"), params.get("noise_scale")),
            "method": params.get("method"), "noise_scale": params.get("noise_scale"),
            "other": ", ".join(f"{k}={params.get(k)}" for k in varying),
            "seed_values": sorted({s for v in group["values"].values() for s in v},
                            key=lambda s: (s is None, s if s is not None else 0)),
        }
        for column in columns:
            values = list(group["values"][column].values())
            entry[column] = None if not values else (
                statistics.fmean(values),
                statistics.stdev(values) if len(values) > 1 else None, len(values))
        out.append(entry)
    return sorted(out, key=lambda e: (order.index(e["arm"]) if e["arm"] in order else len(order),
                                      e["arm"], e["other"]))


def main(argv: list[str] | None = None) -> None:
    """``python -m bnr.pipeline.experiments EXPS.csv [SOURCE ...]``: print the Table 5 summary."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    runs = read_exp_csv(open(args[0]).read())
    for source in args[1:] or ["transcam"]:
        print(f"\nseed mIoU (%) by arm, seed map: {source}\n")
        print(arm_table(runs, source).to_markdown(index=False))


if __name__ == "__main__":
    main()
