"""PSA post-processing end to end on a tiny synthetic set: affinity training (1 epoch,
resnet38d_tiny), sparse random walk, dense CRF, pseudo-label evaluation, and the clear errors."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bnr.affinity.affinity_model import build_affinity_model, load_affinity_model
from bnr.affinity.walk import random_walk_split
from bnr.config.params import parse_params
from bnr.data.classes import class_names
from bnr.data.synthetic import SyntheticSpec, generate_synthetic
from bnr.data.voc import read_split
from bnr.errors import BnrError
from bnr.pipeline.crf_blocks import crf_settings
from bnr.pipeline.metrics_files import count_values, read_protocol
from bnr.pseudo_labels.crf_labels import crf_split, evaluate_pseudo_labels
from bnr.steps.train_affinity import training_plan as affinity_plan
from tests.conftest import REPO, run_step, update_dataset, with_dataset

pytestmark = pytest.mark.numerics  # float kernels: CI runs it again under AVX2

SIZE = 96  # 12 x 12 AffinityNet grid: the radius-5 pairs need at least 5 x 9


def fake_cams(root: Path, cam_dir: Path, empty: str) -> None:
    """CAMs from the ground truth: blurred class masks (image ``empty``: no class at all)."""
    cam_dir.mkdir(parents=True)
    for img_id in read_split(root, "train"):
        gt = np.asarray(Image.open(root / "SegmentationClass" / f"{img_id}.png"))
        classes = [] if img_id == empty else sorted(int(c) for c in np.unique(gt) if 0 < c < 255)
        cams = []
        for c in classes:
            m = (gt == c).astype(np.float32)
            m = (m + np.roll(m, 3, 0) + np.roll(m, -3, 1)) / 3  # a little blur, still in [0, 1]
            cams.append(m)
        arr = np.stack(cams) if cams else np.zeros((0, *gt.shape), np.float32)
        np.savez(cam_dir / f"{img_id}.npz", classes=np.asarray(classes, np.int64),
                 cams=arr.astype(np.float16))


def tiny_params(root: Path, workers: int = 2):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["dataset"] = "synthetic"
    update_dataset(raw, "synthetic", data={"root": str(root)},
                   train_affinity={"model": "resnet38d_tiny", "crop": SIZE, "epochs": 1,
                                   "batch_size": 3})
    raw["crf"]["workers"] = workers
    raw["train_affinity"]["label_crf"]["workers"] = workers
    raw["random_walk"]["logt"] = 4
    raw["train_affinity"]["pretrained"] = ""  # from scratch (not the pretrain stage's weights)
    return parse_params(raw)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A working directory laid out like the repository after the CAM stages."""
    work = tmp_path_factory.mktemp("psa")
    root = work / "data" / "synthetic"
    generate_synthetic(root, SyntheticSpec(num_train=6, num_val=1, image_size=SIZE, clutter=4))
    empty = read_split(root, "train")[0]
    fake_cams(root, work / "data" / "cams", empty)
    (work / "metrics").mkdir()
    (work / "data" / "seed_threshold.json").write_text(json.dumps({"best_threshold": 0.3}))
    return work




def check_labels(folder: Path, ids, n_classes: int) -> None:
    assert sorted(p.stem for p in folder.iterdir()) == sorted(ids)
    for img_id in ids:
        with Image.open(folder / f"{img_id}.png") as im:
            assert im.mode == "P" and im.size == (SIZE, SIZE)
            assert im.getpalette()[3:6] == [128, 0, 0]  # VOC palette
            arr = np.asarray(im)
        assert arr.max() < n_classes


def test_stages_end_to_end(work: Path, monkeypatch) -> None:
    monkeypatch.chdir(work)
    monkeypatch.setenv("DVCLIVE_LOGLEVEL", "ERROR")
    params = tiny_params(work / "data" / "synthetic")
    ids = read_split(params.data.root, "train")

    run_step("train_affinity", params)
    assert Path("models/affinity.pt").is_file()
    summary = json.loads(Path("metrics/train_affinity.json").read_text())
    proto = read_protocol("metrics/train_affinity.json")
    assert summary["train_images"] == 6 and proto["epochs"] == 1
    assert set(summary["final_epoch_loss"]) == {"loss", "bg", "fg", "neg"}
    assert proto["affinity_labels"]["all_background"] >= 1
    assert proto["model"] == "resnet38d_tiny" and "protocol" not in summary
    assert set(proto["final_epoch_pairs"]) == {"bg_count", "fg_count", "neg_count"}
    assert Path("metrics/train_affinity/plots/metrics").is_dir()
    assert not any(Path("runs/train_affinity").iterdir())  # resume dir removed when finished

    run_step("random_walk", params)
    check_labels(Path("data/rw_labels"), ids, 7)
    walk = json.loads(Path("metrics/random_walk.json").read_text())
    walk_proto = read_protocol("metrics/random_walk.json")
    assert walk["images"] == 6 and walk_proto["beta"] == 14
    # the demo's walk: 2x upscaled, background score = eval_seeds' threshold (0.3 here)
    assert walk_proto["scale"] == 2 and walk_proto["background"] == "seed_threshold"
    assert walk_proto["bg_score"] == 0.3
    assert not np.asarray(Image.open(f"data/rw_labels/{ids[0]}.png")).any()  # no-fg image

    run_step("crf", params)
    check_labels(Path("data/pseudo_labels"), ids, 7)
    metrics = json.loads(Path("metrics/pseudo_labels.json").read_text())
    for key in ("miou_random_walk", "miou_crf"):
        assert 0 <= metrics[key] <= 100
    assert metrics["all_background_images"] >= 1
    assert count_values(metrics) == len(metrics) == 5  # numbers only, no per-class IoUs
    proto = read_protocol("metrics/pseudo_labels.json")
    assert proto["miou_seeds"] > 20  # seeds from the ground truth
    assert proto["dataset"] == "synthetic" and proto["split"] == "train"
    assert proto["ground_truth"] == "SegmentationClass" and proto["seed"] == 0
    assert proto["beta"] == 14 and proto["logt"] == 4 and proto["bg_score"] == 0.3  # threshold
    assert proto["walk_background"] == "seed_threshold" and proto["walk_scale"] == 2
    assert proto["crf"]["gt_prob"] == 0.7 and "noise_scale" in proto and "method" in proto
    table = Path("metrics/pseudo_labels_per_class.csv").read_text().splitlines()
    assert table[0].startswith("class,seeds,random_walk,crf") and len(table) == 1 + 7 + 1
    assert Path("metrics/pseudo_labels_per_class.md").is_file()

    # the evaluation alone reproduces the stage's numbers
    data = params.data
    again, _ = evaluate_pseudo_labels(
        Path("data/rw_labels"), Path("data/pseudo_labels"), Path("data/cams"),
        Path("data/seed_threshold.json"), dataset=params.dataset, root=Path(data.root),
        gt_dir=data.gt_dir, eval_split=data.seed_eval_split, infer_split=data.infer_split,
        progress=False)
    assert again["miou_crf"] == metrics["miou_crf"]


def _fail_on_second(payload):
    if str(payload[1]).endswith("_000001.png"):
        raise ValueError("boom")
    from bnr.pseudo_labels.crf_labels import _crf_one

    return _crf_one(payload)


def _die_on_second(payload):
    if str(payload[1]).endswith("_000001.png"):
        os._exit(3)
    from bnr.pseudo_labels.crf_labels import _crf_one

    return _crf_one(payload)


@pytest.mark.parametrize("fn, words", [(_fail_on_second, "boom"), (_die_on_second, "died")])
def test_crf_worker_failure_names_image(work: Path, tmp_path: Path, fn, words) -> None:
    params = tiny_params(work / "data" / "synthetic", workers=2)
    ids = read_split(params.data.root, "train")
    rw = tmp_path / "rw"
    rw.mkdir()
    for img_id in ids:
        Image.fromarray(np.zeros((SIZE, SIZE), np.uint8) + 1, mode="L").save(rw / f"{img_id}.png")
    out = tmp_path / "pseudo"
    with pytest.raises(BnrError, match=f"syn_train_000001.*{words}|{words}.*syn_train_000001"):
        crf_split(ids, rw, out, root=Path(params.data.root), n_labels=7,
                  crf=crf_settings(params.crf), progress=False, fn=fn)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pseudo")] == []


def test_missing_checkpoint_is_one_line(work: Path, tmp_path: Path) -> None:
    params = tiny_params(work / "data" / "synthetic")
    missing = r"affinity.pt: checkpoint not found \(run the train_affinity stage\)"
    with pytest.raises(BnrError, match=missing) as info:
        load_affinity_model(tmp_path / "affinity.pt", "resnet38d_tiny", params.dataset)
    assert "\n" not in str(info.value)


def test_wrong_shape_cam_is_clear(work: Path, tmp_path: Path) -> None:
    params = tiny_params(work / "data" / "synthetic")
    ids = read_split(params.data.root, "train")
    cam_dir = tmp_path / "cams"
    cam_dir.mkdir()
    np.savez(cam_dir / f"{ids[1]}.npz", classes=np.asarray([1]),
             cams=np.zeros((1, SIZE, SIZE + 8), np.float16))
    model = build_affinity_model("resnet38d_tiny")
    out = tmp_path / "rw"
    with pytest.raises(BnrError, match=f"{ids[1]}.npz.*differs from its image"):
        random_walk_split(model, [ids[1]], out, cam_dir=cam_dir, progress=False,
                          **walk_values(params))
    assert not out.exists()


def test_affinity_training_resumes_exactly(work: Path, tmp_path: Path) -> None:

    import torch

    from bnr.affinity.affinity_training import train_affinity
    from bnr.checkpoints import load_checkpoint

    params = tiny_params(work / "data" / "synthetic")
    plan = affinity_plan(with_dataset(params, "train_affinity", epochs=2))
    kw = {"cam_dir": work / "data" / "cams", "progress": False}
    train_affinity(plan, tmp_path / "a.pt", tmp_path / "a", run_root=tmp_path / "ra", **kw)
    stopped = train_affinity(plan, tmp_path / "b.pt", tmp_path / "b", run_root=tmp_path / "rb",
                             stop_after_epoch=1, **kw)
    assert stopped == {"interrupted_at_epoch": 1} and not (tmp_path / "b.pt").exists()
    train_affinity(plan, tmp_path / "b.pt", tmp_path / "b", run_root=tmp_path / "rb", **kw)
    a = load_checkpoint(tmp_path / "a.pt", {"kind": "affinity"})["model"]
    b = load_checkpoint(tmp_path / "b.pt", {"kind": "affinity"})["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_new_hyperparameter_reaches_the_training(work: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """DEVELOPERS.md's add-a-hyperparameter recipe, followed once: ``train_affinity.poly_power``
    was added in params.yaml, its schema (bnr/config/params.py) and the plan field of the same
    name next to the code that uses it (bnr/affinity/affinity_training.py); nothing copies it.
    A value set in params reaches the learning-rate schedule."""
    import dataclasses

    import bnr.affinity.affinity_training as affinity_training

    params = tiny_params(work / "data" / "synthetic")
    params = dataclasses.replace(params, train_affinity=dataclasses.replace(
        params.train_affinity, poly_power=2.0))
    plan = affinity_plan(params)
    assert plan.poly_power == 2.0
    powers = []
    real = affinity_training.poly_lr

    def recorded(base, step, max_step, power=0.9):
        powers.append(power)
        return real(base, step, max_step, power)

    monkeypatch.setattr(affinity_training, "poly_lr", recorded)
    affinity_training.train_affinity(plan, tmp_path / "a.pt", tmp_path / "a",
                                     run_root=tmp_path / "ra", cam_dir=work / "data" / "cams",
                                     progress=False)
    assert powers and set(powers) == {2.0}


def test_random_walk_small_image_and_small_crop(tmp_path: Path) -> None:
    """Images under 88 px (a grid side under 11) walk with a shrunk radius; a tiny crop is
    refused."""
    root = tmp_path / "syn"
    generate_synthetic(root, SyntheticSpec(num_train=2, num_val=1, image_size=48, clutter=2))
    fake_cams(root, tmp_path / "cams", empty="")
    params = tiny_params(root)
    ids = read_split(root, "train")
    out = tmp_path / "rw"
    stats = random_walk_split(build_affinity_model("resnet38d_tiny"), ids, out,
                              cam_dir=tmp_path / "cams", progress=False, **walk_values(params))
    assert stats["images"] == 2
    for img_id in ids:
        with Image.open(out / f"{img_id}.png") as im:
            assert im.mode == "P" and im.size == (48, 48)
    from bnr.affinity.affinity_training import train_affinity

    with pytest.raises(BnrError, match="train_affinity.crop 48 is too small"):
        train_affinity(affinity_plan(tiny_params_crop(root, 48)), tmp_path / "a.pt",
                       tmp_path / "c", cam_dir=tmp_path / "cams", run_root=tmp_path / "runs",
                       progress=False)


def test_random_walk_split_walks_in_float64(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    """The walk accumulates in float64 (float32: 3e-5 relative off a float64 walk on a 47 x 63
    grid, for about 1.4x the walk's time)."""
    import bnr.affinity.walk

    root = tmp_path / "syn"
    generate_synthetic(root, SyntheticSpec(num_train=1, num_val=1, image_size=48, clutter=2))
    fake_cams(root, tmp_path / "cams", empty="")
    seen = []
    real = bnr.affinity.walk.random_walk_segmentation

    def spy(cams, keys, aff, *args, **kw):
        seen.append(aff.dtype)
        return real(cams, keys, aff, *args, **kw)

    monkeypatch.setattr(bnr.affinity.walk, "random_walk_segmentation", spy)
    random_walk_split(build_affinity_model("resnet38d_tiny"), read_split(root, "train"),
                      tmp_path / "rw", cam_dir=tmp_path / "cams", progress=False,
                      **walk_values(tiny_params(root)))
    assert [str(d) for d in seen] == ["torch.float64"]


def walk_values(params) -> dict:
    """random_walk_split's keyword values from ``params``, as the random_walk step resolves
    them (the fixed background score)."""
    rw = params.random_walk
    return {"root": Path(params.data.root), "n_labels": len(class_names(params.dataset)),
            "beta": rw.beta, "logt": rw.logt, "radius": rw.radius, "bg_score": rw.bg_score}


def tiny_params_crop(root: Path, crop: int):

    params = tiny_params(root)
    return with_dataset(params, "train_affinity", crop=crop)


def test_affinity_training_in_bfloat16_channels_last(work: Path, tmp_path: Path) -> None:
    """The GPU defaults (bf16 autocast + channels_last) exercised on the CPU."""
    import math

    import torch

    from bnr.affinity.affinity_training import train_affinity
    from bnr.checkpoints import load_checkpoint
    from bnr.runtime import Runtime

    runtime = Runtime(torch.device("cpu"), "bfloat16", channels_last=True)
    plan = affinity_plan(tiny_params(work / "data" / "synthetic"))
    summary = train_affinity(plan, tmp_path / "a.pt", tmp_path / "a",
                             cam_dir=work / "data" / "cams",
                             run_root=tmp_path / "r", progress=False, runtime=runtime)
    assert all(math.isfinite(h["loss"]) for h in summary["history"])
    state = load_checkpoint(tmp_path / "a.pt", {"kind": "affinity"})["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
