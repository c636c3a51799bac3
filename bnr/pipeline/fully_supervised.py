"""The fully supervised ceiling: the same segmenter, same schedule, trained on the ground truth.

A WSSS table prints this row so that a reader can tell a weak method from a segmenter that
cannot learn the data. It is an experiment, not a stage (``dvc exp run -S
train_segmenter.labels=ground_truth``); :func:`record_runs` reads the finished experiments' own
files from their git refs (``metrics/segmentation.json``, its protocol and per-class table;
each is ``cache: false``, so it is in the experiment's commit) and writes
``metrics/fully_supervised.json``, which the report and the README show.

    python scripts/record_fully_supervised.py EXP [EXP ...]   # experiment names or run folders
"""

from __future__ import annotations

import io
import json
import statistics
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from bnr.errors import BnrError
from bnr.io import write_json

FILES = ("metrics/segmentation.json", "metrics/segmentation.protocol.json",
         "metrics/segmentation_per_class.csv")


def git_file(ref: str, path: str) -> str:
    """The text of ``path`` at git ``ref`` (or under the folder ``ref``: a run's working copy);
    a one-line error when either does not exist."""
    if Path(ref).is_dir():
        file = Path(ref) / path
        if not file.is_file():
            raise BnrError(f"{file}: not found (did the run reach the evaluate stage?)")
        return file.read_text()
    done = subprocess.run(["git", "show", f"{ref}:{path}"], capture_output=True, text=True)
    if done.returncode:
        raise BnrError(f"{ref}:{path}: not found ({done.stderr.strip().splitlines()[-1:]})")
    return done.stdout


def experiment_ref(name: str) -> str:
    """The git ref of DVC experiment ``name`` (``refs/exps/.../<name>``), else ``name`` itself
    (a commit-ish or a run folder)."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
                          capture_output=True, text=True).stdout.split()
    hits = [r for r in refs if r.rsplit("/", 1)[-1] == name]
    if len(hits) > 1:
        raise BnrError(f"experiment {name!r}: {len(hits)} refs match ({', '.join(hits)})")
    return hits[0] if hits else name


def run_record(metrics: dict, protocol: dict, per_class_csv: str, source: str) -> dict:
    """One run of the ceiling from its three files; refuses a run not trained on the ground
    truth (``segmenter_trained_on`` in the protocol). Runs on different splits are refused
    together, by :func:`summary`."""
    trained_on = protocol.get("segmenter_trained_on")
    if trained_on != "ground_truth":
        raise BnrError(f"{source}: metrics/segmentation.protocol.json says the segmenter was "
                       f"trained on {trained_on!r}, not ground_truth (run it with "
                       "-S train_segmenter.labels=ground_truth)")
    table = pd.read_csv(io.StringIO(per_class_csv))
    per_class = {str(c): float(v) for c, v in zip(table["class"], table["iou"], strict=True)
                 if c != "mIoU"}
    return {"seed": int(protocol["seed"]), "miou": float(metrics["miou"]),
            "split": protocol.get("split"), "per_class": per_class, "source": source,
            "commit": (protocol.get("git") or {}).get("commit")}


def summary(runs: Sequence[dict]) -> dict:
    """``metrics/fully_supervised.json``: mean ± std (sample, n - 1) of the runs' mIoU."""
    values = [r["miou"] for r in runs]
    splits = sorted({str(r["split"]) for r in runs})
    if len(splits) != 1:
        raise BnrError(f"fully supervised runs evaluated on different splits: {splits}")
    return {"split": splits[0], "miou_mean": round(statistics.fmean(values), 2),
            "miou_std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
            "runs": sorted(runs, key=lambda r: r["seed"]),
            "note": "the same segmenter and schedule trained on the ground-truth masks of the "
                    "same split (train_segmenter.labels: ground_truth)"}


def record_runs(names: Sequence[str], out: Path,
                read: Callable[[str, str], str] = git_file) -> dict:
    """Read each experiment's files, summarise, write ``out`` atomically; return the summary."""
    runs = []
    for name in names:
        ref = experiment_ref(name)
        metrics, protocol, table = (read(ref, f) for f in FILES)
        runs.append(run_record(json.loads(metrics), json.loads(protocol), table, name))
    doc = summary(runs)
    write_json(out, doc)
    return doc
