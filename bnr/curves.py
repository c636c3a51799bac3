"""Resume hygiene: dvclive curves cut back to the checkpoint, stale temporaries removed.

A run killed after its last checkpoint has logged curve points past it; the resumed run logs
those steps again, so the points past the checkpoint are dropped first (no duplicated steps).
A run killed while writing an output leaves the ``.<name>.*.tmp`` folder of
:func:`bnr.io.atomic_path`; a stage removes those of its own outputs when it starts.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterable
from pathlib import Path

from bnr.io import write_text


def trim_curves(live_dir: Path, last_step: int) -> int:
    """Drop the rows with ``step > last_step`` from every dvclive ``.tsv`` under ``live_dir``;
    returns the number of rows dropped."""
    dropped = 0
    for tsv in sorted(Path(live_dir).rglob("*.tsv")):
        rows = list(csv.reader(tsv.read_text().splitlines(), delimiter="\t"))
        if not rows or "step" not in rows[0]:
            continue
        col = rows[0].index("step")
        keep = [rows[0]] + [r for r in rows[1:] if len(r) > col and int(float(r[col])) <= last_step]
        if len(keep) < len(rows):
            dropped += len(rows) - len(keep)
            write_text(tsv, "".join("\t".join(r) + "\n" for r in keep))
    return dropped


def remove_stale_temporaries(outputs: Iterable[Path]) -> list[Path]:
    """Remove the ``.<name>.*.tmp`` leftovers of killed writes next to each output; returns
    what was removed."""
    removed = []
    for out in outputs:
        if not out.parent.is_dir():
            continue
        for tmp in sorted(out.parent.glob(f".{out.name}.*.tmp")):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()
            removed.append(tmp)
    return removed
