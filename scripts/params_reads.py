"""The params keys each stage reads, recorded from a real run: ``tests/params_reads.json``.

``python scripts/params_reads.py --write`` copies the working tree to a temporary git repo,
shrinks params.yaml to a tiny configuration (as tests/test_pipeline.py does) and runs
``dvc repro`` there with ``BNR_PARAMS_RECORD`` set (bnr/pipeline/declared.py logs every key a stage
reads); the keys, in dvc.yaml's spelling, are written per stage. ``tests/test_params_declared.py``
compares them with each stage's ``params:`` in dvc.yaml (declared = read), and the slow
end-to-end test records its own repro and compares it with this file, so it stays current.
A few minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bnr.pipeline.declared import _shown  # noqa: E402

READS_FILE = REPO / "tests" / "params_reads.json"


def reads_from_record(record: Path) -> dict[str, list[str]]:
    """``{stage: sorted keys}`` of a ``BNR_PARAMS_RECORD`` log (``stage key state`` lines).
    A ``part`` line is a step through a block towards a declared key inside it (its reads are
    logged below it), not a read."""
    out: dict[str, set[str]] = {}
    for line in record.read_text().splitlines():
        stage, key, state = line.split(" ")
        out.setdefault(stage, set())
        if state != "part":
            out[stage].add(_shown(key))
    return {stage: sorted(keys) for stage, keys in sorted(out.items())}


def tiny(raw: dict) -> dict:
    """The tiny configuration of tests/test_pipeline.py (sizes only: the code paths, hence the
    keys read, are the shipped configuration's)."""
    raw["download"]["synthetic"].update(num_train=12, num_val=4, image_size=64, clutter=4)
    block = raw["datasets"]["synthetic"]
    block["train_cam"].update(crop_size=64, resize_long=[48, 80], epochs=1, batch_size=4)
    block["infer_seeds"].update(scales=[32, 64])
    block["train_affinity"].update(crop=72, epochs=1, batch_size=4)
    block["train_segmenter"].update(crop=64, iterations=20, batch_size=4)
    raw["pretrain"].update(image_size=32, num_val=8, batch_size=4, conformer_steps=2,
                           resnet_steps=2)
    return raw


def record_repro() -> dict[str, list[str]]:
    """Run the tiny ``dvc repro`` in a temporary clone with the reads recorded."""
    import yaml

    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "repo"
        files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                               cwd=REPO, capture_output=True, text=True, check=True).stdout
        for rel in files.split():
            if (REPO / rel).is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, dest / rel)
        (dest / "dvc.lock").unlink(missing_ok=True)
        shutil.rmtree(dest / "metrics", ignore_errors=True)
        raw = yaml.safe_load((dest / "params.yaml").read_text())
        (dest / "params.yaml").write_text(yaml.safe_dump(tiny(raw), sort_keys=False))
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "t"]):
            subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)
        record = Path(tmp) / "reads.txt"
        res = subprocess.run(["dvc", "repro", "-f"], cwd=dest, capture_output=True, text=True,
                             env={**env, "BNR_PARAMS_RECORD": str(record)})
        if res.returncode:
            sys.exit(f"dvc repro failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return reads_from_record(record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {READS_FILE.name}")
    args = parser.parse_args()
    reads = record_repro()
    text = json.dumps(reads, indent=1) + "\n"
    if args.write:
        READS_FILE.write_text(text)
        print(f"wrote {READS_FILE}")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
