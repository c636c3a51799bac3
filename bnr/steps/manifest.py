"""Stage manifest: size and sha256 of every file under the dataset root (existing copies
included), the content DVC hashes for the stages that read the dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bnr.config.params import Params
from bnr.data.manifest import write_manifest


@dataclass(frozen=True)
class Inputs:
    """Nothing but params: the dataset root is ``datasets.<dataset>.data.root``."""


@dataclass(frozen=True)
class Outputs:
    manifest: Path = field(metadata={"help": "one line per file: path, size, sha256 (TSV)"})


def run(cfg: Params, inputs: Inputs, outputs: Outputs) -> dict:
    """Write the manifest of the dataset root (hashes of unchanged files come from a cache
    beside it, ``.manifest-cache/``, which is not an output)."""
    out = Path(outputs.manifest)
    cache = out.parent / ".manifest-cache" / f"{out.name.split('.')[0]}.json"
    n = write_manifest(cfg.data.root, out, cache)
    print(f"{out}: {n} files under {cfg.data.root}")
    return {"files": n}
