"""The figures README.md and docs/*.md quote, generated from metrics/ into marked blocks.

    python scripts/docs_numbers.py --write   # rewrite every block from metrics/
    python scripts/docs_numbers.py --check   # exit 1 and name each block that differs

A block is ``<!-- metrics:NAME -->`` ... ``<!-- /metrics:NAME -->`` (the markers on lines of
their own); NAME is one of :data:`BLOCKS`. ``tests/test_docs_numbers.py`` runs the check, so
a quoted figure cannot drift from the metrics file it names; outside the blocks, a stage time
typed by hand (``train_cam 182 s``) is refused too. After a new run: ``--write``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bnr.errors import BnrError  # noqa: E402
from bnr.pipeline.compare import load_tolerances, tolerance_rows  # noqa: E402
from bnr.pipeline.report import (  # noqa: E402
    STEPS,
    chain_rows,
    chain_table,
    read_fully_supervised,
    read_json,
    read_per_class,
)
from bnr.pipeline.report_provenance import STAGES, read_protocols, stage_rows  # noqa: E402

BLOCK = re.compile(r"(?P<open><!-- metrics:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)"
                   r"(?P<close><!-- /metrics:(?P=name) -->)", re.S)
STAGE_NAMES = "|".join(stage for _, stage, _ in STAGES)
HAND_TIME = re.compile(rf"\b({STAGE_NAMES}) \d+(\.\d+)? s\b")


def doc_files(repo: Path = REPO) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def _paths(metrics: Path) -> dict[str, Path]:
    names = {"seeds": "seeds.json", "pseudo_labels": "pseudo_labels.json",
             "random_walk": "random_walk.json", "segmentation": "segmentation.json",
             "seeds_per_class": "seeds_per_class.csv",
             "pseudo_labels_per_class": "pseudo_labels_per_class.csv",
             "segmentation_per_class": "segmentation_per_class.csv",
             "fully_supervised": "fully_supervised.json"}
    names.update({key: f"{key}.json" for key, _, _ in STAGES})
    return {k: metrics / v for k, v in names.items()}


def _dataset(metrics: Path) -> str:
    data = read_json(metrics / "dataset.json") or {}
    return str(data.get("dataset", "synthetic"))


def chain(metrics: Path) -> str:
    """The chain table of metrics/report.md, and where it comes from."""
    paths = _paths(metrics)
    found = {k: d for k in ("seeds", "pseudo_labels", "random_walk", "segmentation")
             if (d := read_json(paths[k])) is not None}
    protocols, _ = read_protocols({k: paths[k] for k in found})
    per_class = {s.per_class: read_per_class(paths[s.per_class]) for s in STEPS}
    fully = read_fully_supervised(paths["fully_supervised"])
    rows = chain_rows(_dataset(metrics), found, protocols, per_class, fully)
    sources = ", ".join(f"`metrics/{paths[k].name}`" for k in (*found, "fully_supervised")
                        if paths[k].is_file())
    return (chain_table(_dataset(metrics), rows) + f"\n\nFrom {sources} and the per-class "
            "tables beside them (`python scripts/docs_numbers.py --write`).\n")


def times(metrics: Path) -> str:
    """The wall time each stage of the committed run recorded, with its machine."""
    rows = stage_rows(_paths(metrics))
    timed = [r for r in rows if r["seconds"] is not None]
    if not timed:
        return "No stage times recorded in `metrics/`.\n"
    total = sum(r["seconds"] for r in timed)
    machine = sorted({f"{r['cpu']}, {r['kernels']} kernels, {r['threads']} torch threads"
                      for r in rows})
    commits = sorted({f"{r['commit']}, tree {r['tree']}" for r in rows})
    each = ", ".join(f"{r['stage']} {r['seconds']:.1f} s" for r in timed)
    untimed = [r["stage"] for r in rows if r["seconds"] is None]
    return (f"The committed metrics recorded (commit {'; '.join(commits)}; "
            f"{'; '.join(machine)}; whether the cores were idle is not recorded): {each}; "
            f"{total:.0f} s ({total / 60:.1f} min) together"
            + (f", {', '.join(untimed)} and the cheap stages not timed" if untimed else "")
            + ". Source: `seconds*` in `metrics/<stage>.json`, `env` in the protocol files.\n")


def pretrain_time(metrics: Path) -> str:
    """The pretrain stage's recorded training seconds (metrics/pretrain.protocol.json)."""
    proto = read_json(metrics / "pretrain.protocol.json") or {}
    parts = [(proto[k]["model"], proto[k]["train_seconds"]) for k in ("conformer", "resnet38")
             if isinstance(proto.get(k), dict) and "train_seconds" in proto[k]]
    if not parts:
        return "The pretrain stage's time is not recorded in `metrics/`.\n"
    each = " + ".join(f"{m} {s:.1f} s" for m, s in parts)
    total = sum(s for _, s in parts)
    threads = (proto.get("env") or {}).get("torch_threads", "?")
    return (f"Its committed run trained {each} = {total:.0f} s ({total / 60:.0f} min, "
            f"{threads} torch threads; `metrics/pretrain.protocol.json`).\n")


def tolerances(metrics: Path) -> str:
    """The table of ``bnr compare-metrics`` tolerances, from the tolerance file."""
    lines = ["| figure | allowed difference | from |", "|---|---|---|"]
    for figure, allowed, source in tolerance_rows(load_tolerances()):
        lines.append(f"| {figure} | {allowed} | {source} |")
    return "\n".join(lines) + "\n"


def tolerance_summary(metrics: Path) -> str:
    """One sentence: what a correct run on another machine looks like."""
    tol = load_tolerances()
    names = {"seeds.json:miou": "seeds", "pseudo_labels.json:miou_random_walk": "walk",
             "pseudo_labels.json:miou_crf": "CRF", "segmentation.json:miou": "segmenter"}
    each = ", ".join(f"{label} ±{tol.figures[key][0]:g}" for key, label in names.items()
                     if key in tol.figures)
    return ("A correct run on another machine is another draw of that spread: `bnr "
            "compare-metrics --against HEAD` passes it when every figure lands within its "
            f"tolerance ({each} mIoU points; each measured across seeds, CPU kernels and "
            "thread counts: [table](docs/reproducibility.md#tolerances)).\n")


BLOCKS: dict[str, Callable[[Path], str]] = {
    "chain": chain, "times": times, "pretrain_time": pretrain_time, "tolerances": tolerances,
    "tolerance_summary": tolerance_summary}


def rewrite(text: str, metrics: Path, where: str = "") -> str:
    """``text`` with every marked block regenerated from ``metrics``."""
    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise BnrError(f"{where}: unknown block metrics:{name} (known: {', '.join(BLOCKS)})")
        return match["open"] + BLOCKS[name](metrics) + match["close"]

    return BLOCK.sub(fill, text)


def hand_typed_times(text: str) -> list[str]:
    """Stage times written outside the blocks (they drift: generate them instead)."""
    outside = BLOCK.sub("", text)
    return [m.group(0) for m in HAND_TIME.finditer(outside)]


def check(repo: Path = REPO, metrics: Path | None = None) -> list[str]:
    """One line per block that differs from metrics/ and per hand-typed stage time."""
    metrics = metrics or repo / "metrics"
    problems = []
    for path in doc_files(repo):
        text = path.read_text()
        rel = path.relative_to(repo)
        new = rewrite(text, metrics, str(rel))
        for old_m, new_m in zip(BLOCK.finditer(text), BLOCK.finditer(new), strict=True):
            if old_m["body"] != new_m["body"]:
                problems.append(f"{rel}: block metrics:{old_m['name']} differs from metrics/")
        problems += [f"{rel}: stage time typed by hand: {t!r}" for t in hand_typed_times(text)]
    return problems


def write(repo: Path = REPO, metrics: Path | None = None) -> list[Path]:
    metrics = metrics or repo / "metrics"
    changed = []
    for path in doc_files(repo):
        text = path.read_text()
        new = rewrite(text, metrics, str(path.relative_to(repo)))
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the blocks")
    mode.add_argument("--check", action="store_true", help="exit 1 if a block differs")
    args = parser.parse_args(argv)
    try:
        if args.write:
            for path in write():
                print(f"rewrote {path.relative_to(REPO)}")
            return 0
        problems = check()
    except BnrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
