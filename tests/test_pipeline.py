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

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def tiny_params(raw: dict) -> dict:
    raw["download"]["synthetic"].update(num_train=12, num_val=4, image_size=64, clutter=4)
    raw["datasets"]["synthetic"].update(
        crop_size=64, resize_long=[48, 80], epochs=1, batch_size=4, infer_scales=[32, 64],
        affinity_crop=72, affinity_epochs=1, affinity_batch_size=4,
    )
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
    _run(["dvc", "repro"], clone, env)
    dataset = json.loads((clone / "metrics" / "dataset.json").read_text())
    assert dataset["splits"]["train"]["images"] == 12
    assert (clone / "data" / "synthetic" / "JPEGImages").is_dir()
    seeds = json.loads((clone / "metrics" / "seeds.json").read_text())
    assert 0 <= seeds["miou"] <= 100
    proto = seeds["protocol"]
    for key in ("dataset", "split", "ground_truth", "scales", "flip", "crf", "threshold",
                "seed", "method", "noise_scale", "params", "git"):
        assert key in proto, key
    assert proto["scales"] == [32, 64] and proto["ground_truth"] == "SegmentationClass"
    assert (clone / "metrics" / "seeds_threshold.csv").read_text().startswith("threshold,miou")
    assert list((clone / "metrics" / "overlays" / "seeds").glob("*.png"))
    assert (clone / "metrics" / "train_cam" / "plots" / "metrics").is_dir()
    pseudo = json.loads((clone / "metrics" / "pseudo_labels.json").read_text())
    assert {"miou_seeds", "miou_random_walk", "miou_crf", "protocol"} <= set(pseudo)
    assert len(list((clone / "data" / "pseudo_labels").glob("*.png"))) == 12
    # a second repro has nothing to do
    again = _run(["dvc", "repro"], clone, env)
    assert "didn't change" in again or "up to date" in again
    # an ablation switch invalidates train_cam and what follows, not download
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["noise_scale"] = 2.0
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = _run(["dvc", "status"], clone, env)
    assert "train_cam" in status and "download" not in status
    # a CRF setting invalidates crf and what follows, not the affinity network
    params["noise_scale"] = 1.0
    params["crf"]["iterations"] = 5
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = _run(["dvc", "status"], clone, env)
    assert "crf:" in status
    assert "train_affinity" not in status and "random_walk" not in status
