"""Stage manifest: size and sha256 of every file under the dataset root (existing copies
included), the content DVC hashes for the stages that read the dataset."""

from pathlib import Path

from bnr.config import Params
from bnr.data.manifest import write_manifest
from bnr.stage import run_stage


def main(params: Params) -> None:
    out = Path("data") / f"{params.dataset}.manifest.tsv"
    cache = Path("data") / ".manifest-cache" / f"{params.dataset}.json"
    n = write_manifest(params.data.root, out, cache)
    print(f"{out}: {n} files under {params.data.root}")


if __name__ == "__main__":
    run_stage(main, __doc__)
