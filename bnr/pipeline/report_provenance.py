"""The provenance of ``metrics/report.md``: which commit ran each stage, whether its tree was
clean, on which CPU kind, with how many threads, when, and for how long; and one line per
metrics file on how its number was obtained. All of it from the protocol file next to each
metrics file (:mod:`bnr.pipeline.metrics_files`) and the seconds in the metrics files."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bnr.errors import BnrError
from bnr.pipeline.metrics_files import protocol_path, read_protocol

STAGES = (  # report input, stage, field holding its wall time in the metrics file
    ("train_cam", "train_cam", "seconds_this_run"),
    ("infer_seeds", "infer_seeds", "seconds"),
    ("seeds", "eval_seeds", None),
    ("train_affinity", "train_affinity", "seconds_this_run"),
    ("random_walk", "random_walk", "seconds"),
    ("pseudo_labels", "crf", "crf_seconds"),
    ("train_segmenter", "train_segmenter", "seconds_this_run"),
    ("segmentation", "evaluate", "seconds"),
)
# What a run changes in a tracked file without touching the code: a tree dirty only by these
# is a clean run of its commit.
OUTPUT_PREFIXES = ("dvc.lock", "metrics/", "models/", "data/")


def read_protocols(files: Mapping[str, Path]) -> tuple[dict[str, dict], list[str]]:
    """The protocol files next to the metrics ``files`` (``{name: path}``), and notes for those
    missing or unreadable."""
    out, notes = {}, []
    for name, path in files.items():
        try:
            out[name] = read_protocol(path)
        except BnrError as exc:
            notes.append(str(exc))
    return out, notes


def tree_state(git: Mapping[str, Any]) -> str:
    """``clean`` / ``dirty (files)`` / ``outputs only`` from a protocol's ``git`` block."""
    if git.get("dirty") is None:
        return "unknown"
    if not git["dirty"]:
        return "clean"
    changed = git.get("changed")
    if changed is None:
        return "dirty (files not recorded)"
    code = [c for c in changed if not c.startswith(OUTPUT_PREFIXES)]
    if not code:
        return "clean code (only pipeline outputs changed)"
    return "dirty: " + ", ".join(code[:5]) + (f" and {len(code) - 5} more" if len(code) > 5
                                              else "")


def _seconds(path: Path, field: str | None) -> float | None:
    if field is None or not Path(path).is_file():
        return None
    try:
        value = json.loads(Path(path).read_text()).get(field)
    except (json.JSONDecodeError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def stage_rows(paths: Mapping[str, Path]) -> list[dict]:
    """One dict per stage that has its metrics file among ``paths``: stage, seconds, threads,
    cpu, kernels, commit, tree, date (``-`` where the protocol does not record it)."""
    rows = []
    for key, stage, field in STAGES:
        if key not in paths:
            continue
        try:
            proto = read_protocol(paths[key])
        except BnrError:
            proto = {}
        env, git = proto.get("env") or {}, proto.get("git") or {}
        threads = env.get("torch_threads", (proto.get("runtime") or {}).get("num_threads"))
        rows.append({
            "stage": stage, "seconds": _seconds(paths[key], field),
            "threads": "-" if threads is None else str(threads),
            "cpu": env.get("cpu", "-"), "kernels": env.get("cpu_capability", "-"),
            "commit": (git.get("commit") or "-")[:7], "tree": tree_state(git) if git else "-",
            "date": proto.get("date", "not recorded"),
        })
    return rows


def provenance_section(paths: Mapping[str, Path], protocols: Mapping[str, dict]) -> list[str]:
    """Markdown lines: a summary sentence and a table, one row per stage."""
    rows = stage_rows(paths)
    if not rows:
        return []
    commits = sorted({r["commit"] for r in rows})
    cpus = sorted({f"{r['cpu']} ({r['kernels']} kernels)" for r in rows})
    threads = sorted({r["threads"] for r in rows})
    timed = [r for r in rows if r["seconds"] is not None]
    total = sum(r["seconds"] for r in timed)
    untimed = [r["stage"] for r in rows if r["seconds"] is None]
    summary = (f"Run from commit {', '.join(commits)} on {', '.join(cpus)} with "
               f"{', '.join(threads)} torch thread(s); the recorded stages took "
               f"{total:.0f} s ({total / 60:.1f} min)")
    summary += f", {', '.join(untimed)} not timed." if untimed else "."
    states = sorted({r["tree"] for r in rows})
    summary += f" Working tree: {'; '.join(states)}."
    lines = ["## Provenance", "", summary, "",
             "| stage | wall time (s) | torch threads | CPU | kernels | commit | tree | date |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        secs = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        lines.append(f"| {r['stage']} | {secs} | {r['threads']} | {r['cpu']} | {r['kernels']} "
                     f"| {r['commit']} | {r['tree']} | {r['date']} |")
    return [*lines, ""]


def _value(key: str, value: Any) -> str:
    if isinstance(value, dict):  # e.g. server_archive: its note says it in words
        return str(value.get("note") or ", ".join(f"{k} {v}" for k, v in value.items()))
    return str(value)


def protocol_lines(protocols: Mapping[str, dict]) -> list[str]:
    """One line per metrics file: how its number was obtained (split, scales, flip, CRF, ...),
    from its protocol file (``{metrics file name: protocol}``)."""
    lines = []
    for name, proto in sorted(protocols.items()):
        bits = [f"{k}={_value(k, proto[k])}" for k in (
            "dataset", "split", "images", "ground_truth", "scales", "flip", "method",
            "noise_scale", "seed") if k in proto]
        if isinstance(proto.get("server_archive"), dict):
            bits.append(f"server archive: {_value('server_archive', proto['server_archive'])}")
        if "crf" in proto:
            bits.append(f"crf={'yes' if proto['crf'] else 'no'}")
        if "thresholds" in proto:
            bits.append("threshold sweep {:.2f}..{:.2f} step {:g}".format(*proto["thresholds"]))
        if proto.get("sweep_note"):
            bits.append(f"**warning: {proto['sweep_note']}**")
        lines.append(f"- `{name}` (`{protocol_path(name).name}`): "
                     + (", ".join(bits) if bits else "no fields recorded"))
    return lines
