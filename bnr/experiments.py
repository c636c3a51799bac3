"""Summaries of DVC experiments: the paper's Table 5 arms, mean and spread over seeds."""

from __future__ import annotations

import io

import pandas as pd

ARMS = (
    ("TransCAM (baseline)", {"method": "transcam"}),
    ("BNR without noise", {"method": "bnr", "noise_scale": 0.0}),
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
        "noise_scale": pd.to_numeric(df[_column(df, "noise_scale")], errors="coerce"),
        "seed": pd.to_numeric(df[_column(df, "seed")], errors="coerce"),
        "source": df[_column(df, "infer_seeds.source")],
        "miou": pd.to_numeric(df[_column(df, "miou")], errors="coerce"),
    })
    return out.dropna(subset=["miou"])


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


def main(argv: list[str] | None = None) -> None:
    """``python -m bnr.experiments EXPS.csv [SOURCE ...]``: print the Table 5 summary."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    runs = read_exp_csv(open(args[0]).read())
    for source in args[1:] or ["transcam"]:
        print(f"\nseed mIoU (%) by arm, seed map: {source}\n")
        print(arm_table(runs, source).to_markdown(index=False))


if __name__ == "__main__":
    main()
