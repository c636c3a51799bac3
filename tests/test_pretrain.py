"""The pretrain stage: its generated world, the checkpoint layouts it writes, the stage itself."""

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import bnr.weights.pretrain as pretrain_module
from bnr.config.params import PretrainConfig, parse_params
from bnr.data.drawing import rotate
from bnr.data.pretrain_world import (
    PALETTES,
    PATTERNS,
    PRETRAIN_CLASSES,
    SHAPES,
    PretrainWorld,
    WorldSpec,
    render_world_image,
    shape_mask,
    world_rng,
)
from bnr.data.synthetic import CONTEXTS, SYNTHETIC_CLASSES, _shape_mask
from bnr.errors import BnrError
from bnr.models.conformer import create_conformer, detect_checkpoint_layout, load_pretrained
from bnr.models.deeplab import create_segmenter
from bnr.models.resnet38 import AffinityNet, load_imagenet_weights, resnet38d_tiny
from bnr.pipeline.resolve import weights_file
from bnr.weights.pretrain import average_precision, classification_scores, lr_at, run_pretrain
from bnr.weights.pretrained import IMAGENET_FILES, PRETRAINED_FILES, pretrained_path
from tests.conftest import numerics_threads, stage_argv

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("one_torch_thread")]

TINY = PretrainConfig(image_size=32, num_val=12, batch_size=4, conformer_steps=2,
                      resnet_steps=2, log_every=1, clutter=2)


class Recorder:
    """A dvclive stand-in: keeps what the engine logs (tests run outside a git repository)."""

    logged: list[tuple[str, int, float]] = []

    def __init__(self, dir: str, **_: object) -> None:
        self.step = 0

    def log_params(self, params: dict) -> None:
        pass

    def log_metric(self, name: str, value: float) -> None:
        Recorder.logged.append((name, self.step, value))

    def end(self) -> None:
        pass


def pretrain(cfg, out: Path, runs: Path, **kw) -> dict:
    return run_pretrain(cfg, out / "conformer.pth", out / "resnet38d.pth", log=lambda m: None,
                        run_root=runs, progress=False, live_factory=Recorder, **kw)


def test_world_is_deterministic_and_splits_differ():
    spec = WorldSpec(image_size=48)
    for split in ("train", "val"):
        for index in (0, 7):
            a, ca = render_world_image(spec, world_rng(spec, split, index))
            b, cb = render_world_image(spec, world_rng(spec, split, index))
            assert a.tobytes() == b.tobytes() and ca == cb
    train, _ = render_world_image(spec, world_rng(spec, "train", 3))
    val, _ = render_world_image(spec, world_rng(spec, "val", 3))
    other, _ = render_world_image(WorldSpec(image_size=48, seed=1), world_rng(
        WorldSpec(image_size=48, seed=1), "train", 3))
    assert train.tobytes() != val.tobytes() and train.tobytes() != other.tobytes()


def test_world_items_have_multi_hot_targets_over_all_classes():
    spec = WorldSpec(image_size=48, max_objects=3)
    world = PretrainWorld(spec, "train", 200)
    counts = np.zeros(len(PRETRAIN_CLASSES))
    objects = []
    for i in range(len(world)):
        item = world[i]
        assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
        counts += item["labels"].numpy()
        objects.append(int(item["labels"].sum()))
    assert len(PRETRAIN_CLASSES) == 50 and (counts > 0).sum() >= 45
    assert set(objects) <= {0, 1, 2, 3} and {1, 2, 3} <= set(objects)


def test_world_classes_are_disjoint_from_the_demo():
    demo_names = set(SYNTHETIC_CLASSES) | {c for c in CONTEXTS if c}
    assert not demo_names & (set(SHAPES) | set(PATTERNS) | set(PALETTES))
    # no world shape matches a demo shape, at any rotation and a range of sizes (mask IoU)
    yy, xx = np.mgrid[-40:41, -40:41].astype(float)
    for shape in SHAPES:
        for cls in range(1, len(SYNTHETIC_CLASSES)):
            demo = _shape_mask(cls, yy, xx, 20)
            for angle in np.linspace(0, 2 * np.pi, 12, endpoint=False):
                ry, rx = rotate(yy, xx, angle)
                for scale in (0.8, 1.0, 1.25):
                    mask = shape_mask(shape, ry, rx, 20 * scale)
                    iou = (mask & demo).sum() / (mask | demo).sum()
                    assert iou < 0.75, (shape, SYNTHETIC_CLASSES[cls], angle, scale, iou)


def test_scores_and_schedule():
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == 1.0
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([0, 1, 0])) == 0.5
    assert np.isnan(average_precision(np.array([0.1]), np.array([0])))
    scores = np.array([[0.9, 0.1], [0.2, 0.7], [0.6, 0.5]])
    targets = np.array([[1, 0], [0, 1], [0, 1]])
    out = classification_scores(scores, targets)
    assert out["top1_single_object"] == pytest.approx(100 * 2 / 3, abs=0.01)
    lrs = [lr_at(s, 100, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and max(lrs) == pytest.approx(1.0)
    assert lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    torch.set_num_threads(numerics_threads())  # as the tests that rebuild it (bit-identical)
    Recorder.logged.clear()
    summary = pretrain(TINY, out, out / "runs")
    return out, summary, list(Recorder.logged)


def test_conformer_file_is_official_layout_and_loads_strictly(written):
    out, summary, _ = written
    state = torch.load(out / "conformer.pth", map_location="cpu", weights_only=True)
    assert detect_checkpoint_layout(state) == "official"
    # the official heads: a Linear on the pooled CNN map and one on the class token, K = 50
    assert state["conv_cls_head.weight"].shape == (50, 64)  # c3 of conformer_tiny
    assert state["trans_cls_head.weight"].shape == (50, 96)
    model = create_conformer("conformer_tiny", num_classes=7)
    load_pretrained(model, out / "conformer.pth")
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith(("conv_cls_head", "trans_cls_head")):
            assert torch.equal(own[key], value), key
    assert summary["conformer"]["steps"] == 2 and 0 <= summary["conformer"]["map"] <= 100
    broken = {k: v for k, v in state.items() if not k.startswith("trans_1.attn.qkv")}
    torch.save(broken, out / "broken.pth")
    with pytest.raises(BnrError, match="missing keys: trans_1.attn.qkv"):
        load_pretrained(create_conformer("conformer_tiny", num_classes=7), out / "broken.pth")


def test_resnet_file_is_converted_layout_and_loads_strictly(written):
    out, _, _ = written
    state = torch.load(out / "resnet38d.pth", map_location="cpu", weights_only=True)
    assert "linear1000.weight" in state and "b2.bn_branch2a.running_mean" in state
    assert not any(k.endswith("num_batches_tracked") for k in state)
    backbone = resnet38d_tiny()
    load_imagenet_weights(backbone, out / "resnet38d.pth")
    assert torch.equal(backbone.state_dict()["b5.conv_branch2a.weight"],
                       state["b5.conv_branch2a.weight"])
    load_imagenet_weights(AffinityNet(resnet38d_tiny()), out / "resnet38d.pth")
    create_segmenter("largefov", "resnet38d_tiny", 7, out / "resnet38d.pth")
    with pytest.raises(BnrError, match="does not match"):
        load_imagenet_weights(resnet38d_tiny(), out / "conformer.pth")


def test_pretrained_values_resolve_per_dataset_and_network():
    from bnr.data.sources import SOURCES

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params = parse_params(raw)
    assert params.train_cam.pretrained == "auto"  # the default
    assert pretrained_path("auto", "synthetic", "conformer") == ""  # the demo: from scratch
    for dataset in ("voc2012", "coco2014"):  # the paper: ImageNet, downloadable by name
        assert pretrained_path("auto", dataset, "conformer") == IMAGENET_FILES["conformer"]
        assert pretrained_path("auto", dataset, "resnet38") == IMAGENET_FILES["resnet38"]
    assert Path(IMAGENET_FILES["conformer"]).name == SOURCES["conformer_s"].filename
    assert Path(IMAGENET_FILES["resnet38"]).name == SOURCES["resnet38_mxnet"].filename
    assert pretrained_path("pretrain", "voc2012", "resnet38") == PRETRAINED_FILES["resnet38"]
    assert pretrained_path("imagenet", "synthetic", "conformer") == IMAGENET_FILES["conformer"]
    assert pretrained_path("w/x.pth", "synthetic", "conformer") == "w/x.pth"
    assert pretrained_path("", "voc2012", "conformer") == ""
    raw["dataset"] = "voc2012"
    raw["train_segmenter"]["arch"] = "deeplabv3_resnet101"  # no ResNet-101 ImageNet file here
    assert weights_file(parse_params(raw), "train_segmenter") == ""
    assert weights_file(parse_params(raw), "train_cam") == IMAGENET_FILES["conformer"]


def test_pretrain_outputs_are_where_pretrain_points() -> None:
    from bnr.pipeline.stage import stage_paths
    from bnr.steps import pretrain

    _, outputs = stage_paths(pretrain, REPO / "dvc.yaml")
    assert {str(outputs.conformer), str(outputs.resnet38)} == set(PRETRAINED_FILES.values())
    assert PRETRAINED_FILES == {"conformer": str(outputs.conformer),
                                "resnet38": str(outputs.resnet38)}


def test_pretrain_stage_on_a_tiny_configuration(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["pretrain"] = dataclasses.asdict(TINY)
    raw["runtime"].update(device="cpu", num_threads=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(stage_argv("pretrain"), cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics" / "pretrain.json").read_text())
    protocol = json.loads((tmp_path / "metrics" / "pretrain.protocol.json").read_text())
    assert protocol["classes"] == 50
    for part in ("conformer", "resnet38"):
        assert protocol[part]["images"] == 12 and 0 <= metrics[f"{part}_map"] <= 100
        assert 0 <= metrics[f"{part}_top1"] <= 100
        assert (tmp_path / protocol[part]["file"]).is_file()
    assert protocol["pretrain"]["conformer_steps"] == 2
    assert protocol["conformer"]["loss_curve"][-1]["step"] == 2
    assert not any((tmp_path / "runs" / "pretrain").iterdir())  # resume state removed
    raw["pretrain"]["batch_size"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    res = subprocess.run(stage_argv("pretrain"), cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "pretrain.batch_size must be an integer >= 1" in res.stderr


def test_training_runs_through_the_engine_with_the_schedule(written):
    out, summary, logged = written
    for net in ("conformer", "resnet38"):
        curve = summary[net]["loss_curve"]  # one point per log interval (a period)
        assert [c["step"] for c in curve] == [1, 2] and all(c["loss"] > 0 for c in curve)
    lrs = [(step, value) for name, step, value in logged if name == "train/lr"]
    assert len(lrs) == 4  # 2 steps per network, log_every 1
    assert all(value == pytest.approx(lr_at(step - 1, 2, TINY.conformer_lr,
                                            TINY.warmup_fraction)) for step, value in lrs)
    assert not any((out / "runs").iterdir())  # finished: no resume state left


def test_interrupted_pretrain_resumes_to_the_same_weights(tmp_path, capsys):
    cfg = dataclasses.replace(TINY, conformer_steps=4, resnet_steps=4, log_every=2)
    full = pretrain(cfg, tmp_path / "full", tmp_path / "runs_full")
    runs = tmp_path / "runs"
    assert pretrain(cfg, tmp_path / "b", runs, stop_after_step=3) == {"interrupted_at_step": 3}
    assert not (tmp_path / "b").exists() and len(list(runs.glob("*/last.pt"))) == 1
    # the Conformer resumes from its step-2 checkpoint and finishes; the ResNet stops at 3
    assert pretrain(cfg, tmp_path / "b", runs, stop_after_step=7) == {"interrupted_at_step": 7}
    assert len(list(runs.glob("*/done.pt"))) == 1 and len(list(runs.glob("*/last.pt"))) == 1
    resumed = pretrain(cfg, tmp_path / "b", runs)  # the Conformer is not trained again
    printed = capsys.readouterr().out
    assert "resuming pretrain conformer" in printed and "resuming pretrain resnet38" in printed
    assert printed.count("step 2 done") == 2
    for name in ("conformer.pth", "resnet38d.pth"):
        first = torch.load(tmp_path / "full" / name, weights_only=True)
        again = torch.load(tmp_path / "b" / name, weights_only=True)
        assert all(torch.equal(first[k], again[k]) for k in first), name
    for net in ("conformer", "resnet38"):
        assert resumed[net]["map"] == full[net]["map"]
        assert resumed[net]["loss_curve"] == full[net]["loss_curve"]
    assert not any(runs.iterdir())


def test_nan_loss_stops_with_its_step_and_the_lr_to_lower(tmp_path, monkeypatch):
    real = pretrain_module.multilabel_loss
    monkeypatch.setattr(pretrain_module, "multilabel_loss",
                        lambda *a: real(*a) * float("nan"))
    with pytest.raises(BnrError, match=r"loss is not finite at block 1, iteration 1 "
                                       r"\(loss=nan\); lower pretrain.conformer_lr"):
        pretrain(TINY, tmp_path, tmp_path / "runs")
    assert not (tmp_path / "conformer.pth").exists()


def test_rebuild_is_identical_on_the_same_machine(written, tmp_path):
    out, _, _ = written
    pretrain(TINY, tmp_path, tmp_path / "runs")
    for name in ("conformer.pth", "resnet38d.pth"):
        first = torch.load(out / name, weights_only=True)
        again = torch.load(tmp_path / name, weights_only=True)
        assert first.keys() == again.keys()
        assert all(torch.equal(first[k], again[k]) for k in first), name


def test_attention_diagnostics_tell_an_affinity_from_a_sink():
    from bnr.cam.attention_diagnostics import attention_stats, patch_labels

    mask = np.zeros((16, 16), np.uint8)
    mask[:8, :8] = 1  # patch 0 (of 4 patches of 8 px) is class 1
    mask[8:, 8:] = 2  # patch 3 is class 2
    mask[0, :] = 255  # boundary pixels are not counted
    labels = patch_labels(mask, 8)
    assert labels.tolist() == [1, 0, 0, 2]
    same = labels[:, None] == labels[None, :]
    affinity = np.where(same, 1.0, 0.01)
    out = attention_stats(affinity / affinity.sum(1, keepdims=True), labels)
    assert out["object_to_same_class"] > out["object_to_object"] > out["bg_to_object"]
    sink = np.tile(np.array([0.7, 0.1, 0.1, 0.1]), (4, 1))  # every query attends to patch 0
    out = attention_stats(sink, labels)
    assert out["bg_to_object"] > out["object_to_same_class"]
    uniform = attention_stats(np.full((4, 4), 0.25), labels)
    assert uniform["row_entropy"] == pytest.approx(uniform["uniform_entropy"])
