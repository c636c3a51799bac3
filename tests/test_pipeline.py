"""End to end: `dvc repro` of the whole pipeline on a tiny synthetic configuration, in a temporary
git clone of this repository so its own dvc.lock and metrics are untouched."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bnr.pipeline.experiments import flatten_params
from bnr.pipeline.metrics_files import read_protocol
from tests.conftest import REPO, update_dataset
from tests.test_metrics_files import (
    MAX_VALUES,
    STEP_MIOUS,
    check_metrics_layout,
    declared_metrics,
)

sys.path.insert(0, str(REPO / "scripts"))
from params_reads import reads_from_record  # noqa: E402

pytestmark = pytest.mark.slow


def tiny_params(raw: dict) -> dict:
    raw["download"]["synthetic"].update(num_train=12, num_val=4, image_size=64, clutter=4)
    update_dataset(raw, "synthetic",
                   train_cam={"crop_size": 64, "resize_long": [48, 80], "epochs": 1,
                              "batch_size": 4},
                   infer_seeds={"scales": [32, 64]},
                   train_affinity={"crop": 72, "epochs": 1, "batch_size": 4},
                   train_segmenter={"crop": 64, "iterations": 20, "batch_size": 4})
    raw["pretrain"].update(image_size=32, num_val=8, batch_size=4, conformer_steps=2,
                           resnet_steps=2)
    return raw


def _run(cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A clone of the working tree (tracked + untracked files) committed in a fresh repo."""
    dest = tmp_path_factory.mktemp("clone") / "repo"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for rel in ("dvc.lock",):
        (dest / rel).unlink(missing_ok=True)
    shutil.rmtree(dest / "metrics", ignore_errors=True)
    # The report's one committed input (not a stage's output): the fully supervised row.
    fully = dest / "metrics" / "fully_supervised.json"
    fully.parent.mkdir()
    fully.write_text(json.dumps({"split": "val", "miou_mean": 50.0, "miou_std": 1.0, "runs": [
        {"seed": 0, "miou": 50.0, "per_class": {"background": 90.0}}], "note": "tiny test"}))
    raw = yaml.safe_load((dest / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(tiny_params(raw), sort_keys=False))
    env = _env()
    _run(["git", "init", "-q"], dest, env)
    _run(["git", "add", "-A"], dest, env)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"], dest, env)
    return dest


def _env() -> dict:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    return env


def test_dvc_repro_end_to_end(clone):
    env = _env()
    out = _run(["dvc", "stage", "list"], clone, env)
    assert "download" in out
    # every key each stage reads (bnr/pipeline/declared.py)
    record = clone.parent / "params_reads.txt"
    _run(["dvc", "repro"], clone, {**env, "BNR_PARAMS_RECORD": str(record)})
    recorded = json.loads((REPO / "tests" / "params_reads.json").read_text())
    assert reads_from_record(record) == recorded, (  # tests/test_params_declared.py's input
        "the keys the stages read changed: python scripts/params_reads.py --write")
    dataset = json.loads((clone / "metrics" / "dataset.json").read_text())
    assert dataset["splits"]["train"]["images"] == 12
    assert (clone / "data" / "synthetic" / "JPEGImages").is_dir()
    seeds = json.loads((clone / "metrics" / "seeds.json").read_text())
    # the steps agree with each other: the seed figure is the sweep's best, and the crf stage,
    # which scores the seeds again from the CAM files at eval_seeds' threshold, gets it too
    sweep = [line.split(",") for line in
             (clone / "metrics" / "seeds_threshold.csv").read_text().splitlines()[1:]]
    by_threshold = {float(t): float(m) for t, m in sweep}
    assert seeds["miou"] == pytest.approx(max(by_threshold.values()), abs=1e-3)
    assert by_threshold[seeds["best_threshold"]] == pytest.approx(seeds["miou"], abs=1e-3)
    crf_protocol = read_protocol(clone / "metrics" / "pseudo_labels.json")
    assert crf_protocol["seed_threshold"] == seeds["best_threshold"]
    assert crf_protocol["miou_seeds"] == pytest.approx(seeds["miou"], abs=1e-3)
    proto = read_protocol(clone / "metrics" / "seeds.json")
    for key in ("dataset", "split", "ground_truth", "scales", "flip", "crf", "threshold",
                "seed", "method", "noise_scale", "params", "git"):
        assert key in proto, key
    assert proto["scales"] == [32, 64] and proto["ground_truth"] == "SegmentationClass"
    assert (clone / "metrics" / "seeds_threshold.csv").read_text().startswith("threshold,miou")
    assert list((clone / "metrics" / "overlays" / "seeds").glob("*.png"))
    assert (clone / "metrics" / "train_cam" / "plots" / "metrics").is_dir()
    pseudo = json.loads((clone / "metrics" / "pseudo_labels.json").read_text())
    assert {"miou_random_walk", "miou_crf"} <= set(pseudo)
    assert len(list((clone / "data" / "pseudo_labels").glob("*.png"))) == 12
    report = (clone / "metrics" / "report.md").read_text()
    assert "| Fully supervised (segmenter on ground truth) | val |" in report
    assert "](report_figures/seeds_threshold.png)" in report and "## Provenance" in report
    values = check_metrics_layout(clone)  # every metrics file has its protocol file
    print(f"declared metrics hold {values} values")
    assert values <= MAX_VALUES
    check_dvc_views(clone, env)
    # a second repro has nothing to do
    again = _run(["dvc", "repro"], clone, env)
    assert "didn't change" in again or "up to date" in again
    # (which edit marks which stages: test_dvc_status_marks_exactly)
    # an ablation as an experiment (train_cam onwards: on the tiny configuration a later
    # switch, e.g. random_walk.beta, moves no step figure): the compared columns are the step
    # numbers, no protocol
    _run(["git", "config", "user.email", "t@t"], clone, env)  # dvc exp run commits too
    _run(["git", "config", "user.name", "t"], clone, env)
    _run(["git", "add", "-A"], clone, env)  # the baseline run, committed as a user would
    _run(["git", "commit", "-qm", "baseline"], clone, env)
    _run(["dvc", "exp", "run", "-S", "noise_scale=2.0"], clone, env)
    header = _run(["dvc", "exp", "show", "--csv", "--only-changed"], clone, env).splitlines()[0]
    print(f"dvc exp show --only-changed: {header}")
    columns = header.split(",")
    # (the report stage's dependencies metrics/*.protocol.json are hash columns, not fields)
    assert "noise_scale" in columns
    assert not [c for c in columns if "protocol" in c and not c.endswith(".protocol.json")]
    owners = [metric_file(clone, c) for c in columns]
    metric_owners = [o for o in owners if o]
    assert len(metric_owners) <= MAX_VALUES and metric_owners[0] in STEP_MIOUS, owners
    steps = [i for i, o in enumerate(metric_owners) if o in STEP_MIOUS]
    assert steps == list(range(len(steps))), metric_owners  # the step files' columns first
    diff = json.loads(_run(["dvc", "metrics", "diff", "--all", "--json"], clone, env))
    assert not [k for keys in diff.values() for k in keys if "protocol" in k]
    for path, keys in STEP_MIOUS.items():
        assert set(keys) <= set(diff[path]), (path, diff.get(path))


def metric_file(repo: Path, column: str) -> str | None:
    """The metrics file a ``dvc exp show --csv`` column belongs to (dvc writes ``file:key``
    only where the key is in several files), or None for a param or dependency column."""
    owners = []
    for rel in declared_metrics(repo):
        keys = set(flatten_params(json.loads((repo / rel).read_text())))
        if column.startswith(f"{rel}:") or column in keys:
            owners.append(rel)
    return owners[0] if len(owners) == 1 else None


def check_dvc_views(clone: Path, env: dict) -> None:
    """dvc metrics show: the step mIoUs and no protocol; dvc exp show: step files first; the
    per-class bar charts render."""
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], clone, env))
    files = shown[""]["data"]
    assert list(files)[:3] == list(STEP_MIOUS) and "metrics/dataset.json" not in files
    assert "protocol" not in json.dumps(files) and "per_class" not in json.dumps(files)
    for path, keys in STEP_MIOUS.items():
        assert all(isinstance(files[path]["data"][k], float) for k in keys), path
    rows = json.loads(_run(["dvc", "exp", "show", "--json"], clone, env))
    workspace = next(r for r in rows if r["rev"] == "workspace")
    assert list(workspace["data"]["metrics"])[:3] == list(STEP_MIOUS)  # exp show's column order
    plots = json.loads(_run(["dvc", "plots", "show", "--json"], clone, env))
    # the tiny run is shorter than the training stages' log interval: no step curves (the
    # curated training plots are checked on the committed metrics: tests/test_report.py)
    assert not [e for e in plots.get("errors", []) if not (
        e["type"] == "FileNotFoundError" and "/plots/metrics/train/" in e["source"])]
    bars = [name for name, items in plots["data"].items() if name.startswith("Per-class IoU")
            and items[0]["content"]["mark"]["type"] == "bar"]
    assert len(bars) == 4, list(plots["data"])


ALL_STAGES = {"pretrain", "download", "train_cam", "infer_seeds", "eval_seeds", "train_affinity",
              "random_walk", "crf", "train_segmenter", "evaluate", "report"}
# (what is edited, the exact set of stages `dvc status` marks). Stages downstream of a marked
# stage re-run through their data deps; these are the stages whose own deps or params change.
STATUS_CASES = [
    ("param datasets.synthetic.evaluate.scales", {"evaluate"}),
    ("param datasets.synthetic.data.test_split", {"download", "evaluate"}),  # download records it
    ("param datasets.synthetic.train_affinity.lr", {"train_affinity"}),
    ("param noise_scale", {"train_cam", "infer_seeds", "eval_seeds", "train_affinity", "crf",
                           "train_segmenter", "evaluate"}),
    ("param crf.iterations", {"crf", "evaluate"}),
    # the device decides the real precision under `precision: auto`: every network stage
    ("param runtime.device", {"pretrain", "train_cam", "infer_seeds", "train_affinity",
                              "random_walk", "train_segmenter", "evaluate"}),
    ("param random_walk.beta", {"random_walk", "crf"}),
    ("param datasets.synthetic.random_walk.scale", {"random_walk", "crf"}),
    ("param eval_seeds.overlays", {"eval_seeds"}),
    # the split / image / ground-truth reader: every stage that reads or checks (bnr/data/checks.py,
    # run by each such stage before its work) images, splits or masks through it
    ("file bnr/data/voc.py", ALL_STAGES - {"pretrain", "report"}),
    ("file bnr/pipeline/report.py", {"report"}),
    # affinity labels and loss: only their training (random_walk follows through affinity.pt)
    ("file bnr/affinity/affinity_labels.py", {"train_affinity"}),
    # pixel-pair geometry: AffinityNet (training, walk) and ResNet-38d (pretrain, the segmenter)
    ("file bnr/models/pairs.py", {"pretrain", "train_affinity", "random_walk", "train_segmenter",
                                  "evaluate"}),
    ("file bnr/engine.py", {"pretrain", "train_cam", "train_affinity", "train_segmenter"}),
    # CRF code: only the CRF stage (the walk's background helpers live beside the walk)
    ("file bnr/pseudo_labels/crf_labels.py", {"crf"}),
    # the walk's background score: the walk, and the CRF stage that records it
    ("file bnr/affinity/random_walk.py", {"random_walk", "crf"}),
    # pretrained weights (the weights stage's fingerprints; the weights stage itself runs on every
    # repro and is not counted): with the default keys (auto: from scratch on synthetic) an
    # edited pretrain file marks only its stage ...
    ("weights models/pretrain/conformer.pth", {"pretrain"}),
    # ... and a user's weights file, once a key names it: its training stage onwards
    ("weights train_cam.pretrained=models/mine/conformer.pth", {"train_cam"}),
]
ALWAYS_CHANGED = {"manifest", "weights"}  # re-hash on every repro; their outputs say what changed


def _dvc_status(clone: Path) -> set[str]:
    """The stages ``dvc status`` marks, less the always-changed ones (DVC's Python API: the same
    answer as ``dvc status --json`` without a process start per call)."""
    from dvc.repo import Repo

    with Repo(str(clone)) as repo:
        status = repo.status()
    return {name.split(":")[-1] for name in status} - ALWAYS_CHANGED


def _edit_weights(clone: Path, env: dict, what: str) -> dict[Path, bytes]:
    """Edit a pretrained weights file as a user would, then run the weights stage alone (as
    ``dvc repro`` would first); ``key=path``: the key names a copy of the pretrain stage's file,
    and ``dvc commit`` records that state as reproduced (what a ``dvc repro`` with it would leave
    in dvc.lock, without training) before the edit. Returns what to restore."""
    restore = {}
    if "=" in what:
        key, what = what.split("=", 1)
        for rel in ("params.yaml", "dvc.lock"):
            restore[clone / rel] = (clone / rel).read_bytes()
        (clone / what).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clone / "models/pretrain/conformer.pth", clone / what)
        params = yaml.safe_load(restore[clone / "params.yaml"])
        block, leaf = key.split(".")
        params[block][leaf] = what
        (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        _run(["dvc", "repro", "--single-item", "weights"], clone, env)
        _run(["dvc", "commit", "--force"], clone, env)
        assert _dvc_status(clone) == set()  # the user's file is now part of the baseline
    path = clone / what
    restore[path] = path.read_bytes()
    path.write_bytes(restore[path][:-1] + bytes([restore[path][-1] ^ 0xFF]))  # same size
    _run(["dvc", "repro", "--single-item", "weights"], clone, env)
    return restore


@pytest.fixture(scope="module")
def reproduced(clone: Path) -> Path:
    """The clone back at its committed baseline (after test_dvc_repro_end_to_end's experiment:
    git's files and DVC's outputs checked out, no training), or reproduced once if the
    end-to-end test did not run first; nothing to do for dvc status."""
    env = _env()
    if _run(["git", "ls-files", "dvc.lock"], clone, env).strip():  # the end-to-end test ran
        _run(["git", "checkout", "--", "."], clone, env)
        _run(["dvc", "checkout", "--force"], clone, env)
    _run(["dvc", "repro"], clone, env)
    assert _dvc_status(clone) == set()
    return clone


@pytest.mark.parametrize(("edit", "expected"), STATUS_CASES)
def test_dvc_status_marks_exactly(reproduced, edit, expected):
    """After a full repro, one edit marks exactly the stages that read what was edited."""
    clone, env = reproduced, _env()
    kind, what = edit.split(" ", 1)
    if kind == "weights":
        restore = _edit_weights(clone, env, what)
        status = _dvc_status(clone)
        for path, data in restore.items():
            path.write_bytes(data)
        _run(["dvc", "repro", "--single-item", "weights"], clone, env)  # the fingerprints back
        assert status == expected
        return
    path = clone / ("params.yaml" if kind == "param" else what)
    before = path.read_text()
    try:
        if kind == "param":
            params = yaml.safe_load(before)
            *parents, leaf = what.split(".")
            block = params
            for key in parents:
                block = block[key]
            value = block[leaf]
            block[leaf] = (value + [0.5] if isinstance(value, list) else
                           value + 1 if isinstance(value, (int, float)) else value + "_x")
            path.write_text(yaml.safe_dump(params, sort_keys=False))
        else:
            path.write_text(before + "\n# edited by test_dvc_status_marks_exactly\n")
        status = _dvc_status(clone)
    finally:
        path.write_text(before)
    # manifest and weights are always_changed (they re-hash on every repro); not counted
    assert status == expected
    assert _dvc_status(clone) == set()  # restored: the next case starts from the baseline
