"""``bnr compare-metrics``: a fresh run's metrics against committed ones, within tolerances.

Float results differ across CPU kernels (ISA, thread count), so figures reproduce bit-exactly
only on the same machine and environment; on another machine they must hold within a tolerance.
Only top-level numbers present on both sides are compared (nested blocks such as ``protocol``,
per-class dicts and loss dicts are skipped, and so are ``*.protocol.json`` sibling files).
A figure listed in ``bnr/pipeline/tolerances.yaml`` (``<file>:<field>``) gets the allowance
measured for it there (across seeds, CPU kernels and thread counts; the table prints where it
comes from); ``--tolerance`` / ``--threshold-tolerance`` / ``--rel-tolerance`` override the
file for every figure of their kind. Any other field gets the tolerance of its kind (the
file's ``defaults``):

- ``miou*``: mIoU points, absolute;
- ``*threshold``: a background threshold picked on a grid, absolute;
- ``*seconds*`` / ``*per_second*`` / ``*per_iteration*``: timings, not compared;
- other integers: counts fixed by the configuration (images, steps), exact, except counts of
  all-background images, which follow the maps: relative, at least 2;
- other floats (losses): relative.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from bnr.config.yaml_load import load_yaml
from bnr.errors import BnrError

TIMING_MARKS = ("seconds", "per_second", "per_iteration")
TOLERANCES_FILE = Path(__file__).with_name("tolerances.yaml")


@dataclass(frozen=True)
class Tolerances:
    """Allowed |fresh - committed| per kind (see the module docstring), and per figure
    (``{"seeds.json:miou": (allowed, where it comes from)}``); ``sources`` says where each
    kind's default comes from."""

    miou: float = 1.5
    threshold: float = 0.1
    relative: float = 0.1
    figures: Mapping[str, tuple[float, str]] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)


def load_tolerances(path: Path = TOLERANCES_FILE) -> Tolerances:
    """The tolerance file (``figures``: ``{file:field: {allowed, from}}``, ``defaults``:
    ``{miou|threshold|relative: {allowed, from}}``); a one-line BnrError when malformed."""
    data = load_yaml(path, "tolerance file")
    try:
        figures = {str(k): (float(v["allowed"]), str(v["from"]))
                   for k, v in (data.get("figures") or {}).items()}
        defaults = {k: (float(v["allowed"]), str(v["from"]))
                    for k, v in (data.get("defaults") or {}).items()}
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise BnrError(f"{path}: each entry needs a numeric 'allowed' and a 'from' "
                       f"({type(exc).__name__}: {exc})") from None
    unknown = set(defaults) - {"miou", "threshold", "relative"}
    if unknown:
        raise BnrError(f"{path}: unknown defaults {sorted(unknown)} (miou, threshold, relative)")
    if any(v[0] < 0 for v in [*figures.values(), *defaults.values()]):
        raise BnrError(f"{path}: an allowed difference is negative")
    base = Tolerances()
    return Tolerances(**{k: defaults.get(k, (getattr(base, k), ""))[0]
                         for k in ("miou", "threshold", "relative")},
                      figures=figures, sources={k: v[1] for k, v in defaults.items()})


def tolerance_rows(tol: Tolerances) -> list[tuple[str, str, str]]:
    """``(figure, allowed, where it comes from)`` of each listed figure, then the defaults."""
    units = {"miou": "mIoU points", "threshold": "", "relative": "relative"}
    rows = [(f"`{k}`", f"{a:g}" + (" mIoU points" if k.split(":")[-1].startswith("miou")
                                    else ""), src) for k, (a, src) in tol.figures.items()]
    for kind in ("miou", "threshold", "relative"):
        rows.append((f"any other `{kind}` figure", f"{getattr(tol, kind):g} {units[kind]}".strip(),
                     tol.sources.get(kind, "built-in default")))
    return rows


@dataclass(frozen=True)
class Comparison:
    """One figure: ``file`` / ``field``, both values, the allowed difference and its kind."""

    file: str
    field: str
    committed: float
    fresh: float
    allowed: float
    kind: str

    source: str = ""

    @property
    def diff(self) -> float:
        return self.fresh - self.committed

    @property
    def ok(self) -> bool:
        return abs(self.diff) <= self.allowed + 1e-12


def field_kind(field: str, value: float) -> str | None:
    """``miou`` | ``threshold`` | ``count`` | ``float_count`` | ``relative`` | None (timing)."""
    name = field.lower()
    if any(mark in name for mark in TIMING_MARKS):
        return None
    if name.startswith("miou"):
        return "miou"
    if name.endswith("threshold"):
        return "threshold"
    if isinstance(value, int):
        return "float_count" if "background" in name else "count"
    return "relative"


def allowed_difference(kind: str, committed: float, tol: Tolerances) -> float:
    if kind == "miou":
        return tol.miou
    if kind == "threshold":
        return tol.threshold
    if kind == "count":
        return 0.0
    if kind == "float_count":
        return max(tol.relative * abs(committed), 2.0)
    return tol.relative * abs(committed)


def top_level_numbers(data: object) -> dict[str, float]:
    """The top-level int/float fields of a metrics JSON object (bools and nested values out)."""
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def compare_numbers(file: str, committed: dict, fresh: dict, tol: Tolerances) -> list[Comparison]:
    """Comparisons of the numeric fields present in both JSON objects (committed order)."""
    old, new = top_level_numbers(committed), top_level_numbers(fresh)
    out = []
    for name, value in old.items():
        kind = field_kind(name, value)
        if kind is None or name not in new:
            continue
        allowed, source = tol.figures.get(f"{file}:{name}", (None, ""))
        if allowed is None:
            allowed = allowed_difference(kind, float(value), tol)
            source = tol.sources.get("relative" if "count" in kind else kind, "") \
                if kind != "count" else "a count fixed by the configuration"
        out.append(Comparison(file, name, float(value), float(new[name]), allowed, kind,
                              source))
    return out


def _parse(text: str, where: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BnrError(f"{where}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def _metric_file(name: str) -> bool:
    return name.endswith(".json") and not name.endswith(".protocol.json")


def read_metrics_dir(folder: Path) -> dict[str, object]:
    """``{file name: parsed JSON}`` of the metrics JSON files directly in ``folder``."""
    if not folder.is_dir():
        raise BnrError(f"{folder}: metrics folder not found")
    return {p.name: _parse(p.read_text(), str(p))
            for p in sorted(folder.iterdir()) if p.is_file() and _metric_file(p.name)}


def _git(args: list[str], cwd: Path) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise BnrError(f"git could not run ({exc})") from None
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["failed"])[-1]
        raise BnrError(f"git {' '.join(args)}: {message}")
    return done.stdout


def read_metrics_rev(rev: str, folder: Path) -> dict[str, object]:
    """The metrics JSON files of ``folder`` as committed at git revision ``rev``."""
    cwd, name = folder.resolve().parent, folder.resolve().name  # paths relative to cwd
    if not cwd.is_dir():
        raise BnrError(f"{folder}: its parent folder does not exist")
    listed = _git(["ls-tree", "--name-only", rev, f"./{name}/"], cwd)
    files = [Path(n).name for n in listed.splitlines() if _metric_file(n)]
    if not files:
        raise BnrError(f"{rev}: no metrics JSON files committed under {folder}")
    return {f: _parse(_git(["show", f"{rev}:./{name}/{f}"], cwd), f"{rev}:{folder}/{f}")
            for f in files}


def compare_metrics(committed: dict[str, object], fresh: dict[str, object],
                    tol: Tolerances) -> list[Comparison]:
    """Comparisons of every file present on both sides."""
    out: list[Comparison] = []
    for name in sorted(committed.keys() & fresh.keys()):
        out += compare_numbers(name, committed[name], fresh[name], tol)
    return out


def format_table(rows: list[Comparison]) -> str:
    """A plain-text table: file, field, committed, fresh, difference, allowed, status and
    where the allowance comes from."""
    header = ("file", "field", "committed", "fresh", "diff", "allowed", "status",
              "allowed from")
    body = [(r.file, r.field, f"{r.committed:g}", f"{r.fresh:g}", f"{r.diff:+.4g}",
             f"{r.allowed:.4g}" + (" mIoU" if r.kind == "miou" else ""),
             "ok" if r.ok else "OUTSIDE", r.source or "-") for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in [header, *body])


def with_overrides(tol: Tolerances, miou: float | None = None, threshold: float | None = None,
                   relative: float | None = None) -> Tolerances:
    """``tol`` with the kinds given on the command line applied to every figure of that kind
    (the per-figure allowances of those kinds dropped)."""
    given = {k: v for k, v in (("miou", miou), ("threshold", threshold),
                               ("relative", relative)) if v is not None}
    for name, value in given.items():
        if not value >= 0:
            option = {"miou": "--tolerance", "threshold": "--threshold-tolerance",
                      "relative": "--rel-tolerance"}[name]
            raise BnrError(f"{option} must be a number >= 0, got {value}")

    def kind(key: str) -> str | None:
        kind = field_kind(key.split(":")[-1], 0.0)
        return "relative" if kind in ("float_count", "count") else kind

    figures = {k: v for k, v in tol.figures.items() if kind(k) not in given}
    sources = {**tol.sources, **{k: "the command line" for k in given}}
    return replace(tol, **given, figures=figures, sources=sources)


def run_compare(against: str, metrics: Path, tol: Tolerances) -> int:
    """Print the table and each figure outside its tolerance; 0 if all hold, else 1."""
    against_path = Path(against)
    if against_path.is_dir():
        committed = read_metrics_dir(against_path)
    else:
        try:
            _git(["rev-parse", "--verify", "--quiet", f"{against}^{{commit}}"],
                 metrics.resolve().parent)
        except BnrError:
            raise BnrError(f"--against {against}: neither a metrics folder nor a git revision "
                           "of this repository") from None
        committed = read_metrics_rev(against, metrics)
    fresh = read_metrics_dir(metrics)
    rows = compare_metrics(committed, fresh, tol)
    if not rows:
        raise BnrError(f"no numeric metrics in common between {against} and {metrics}")
    print(format_table(rows))
    outside = [r for r in rows if not r.ok]
    for r in outside:
        unit = " mIoU points" if r.kind == "miou" else ""
        print(f"outside tolerance: {r.file} {r.field}: committed {r.committed:g}, fresh "
              f"{r.fresh:g} (|diff| {abs(r.diff):.4g} > {r.allowed:.4g}{unit})")
    only = sorted(committed.keys() ^ fresh.keys())
    if only:
        print("not compared (only on one side): " + ", ".join(only))
    print(f"{len(rows) - len(outside)} of {len(rows)} figures within tolerance")
    return 1 if outside else 0
