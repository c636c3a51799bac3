import dataclasses

import numpy as np
import pytest
import torch
import yaml

import bnr.cam.training as training
from bnr.cam.cam_model import build_cam_model
from bnr.cam.seeds import infer_split_cams, load_cams, seed_miou_sweep, threshold_grid
from bnr.cam.training import train_cam
from bnr.checkpoints import load_checkpoint, load_state_strict
from bnr.config.params import parse_params
from bnr.data.synthetic import SyntheticSpec, generate_synthetic
from bnr.errors import BnrError
from bnr.steps.train_cam import training_plan
from tests.conftest import REPO, update_dataset

pytestmark = pytest.mark.numerics  # float kernels: CI runs it again under AVX2


class NullLive:
    """dvclive stand-in (dvclive itself is exercised by the end-to-end test)."""

    def __init__(self, **kwargs):
        self.step = 0
        self.logged = []

    def log_params(self, params):
        pass

    def log_metric(self, name, value):
        self.logged.append((self.step, name, value))

    def end(self):
        pass


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synthetic"
    generate_synthetic(root, SyntheticSpec(num_train=8, num_val=2, image_size=32, clutter=2))
    return root


def tiny_params(root, **top):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    update_dataset(raw, "synthetic", data={"root": str(root)},
                   train_cam={"crop_size": 32, "resize_long": [24, 40], "epochs": 2,
                              "batch_size": 4, "lr": 0.001},
                   infer_seeds={"scales": [32]})
    raw["train_cam"]["log_every"] = 1
    raw["train_cam"]["pretrained"] = ""  # from scratch (auto would load the pretrain stage's)
    raw.update(top)
    return parse_params(raw)


def _train(params, tmp_path, name, **kw):
    torch.manual_seed(123)  # the stage seeds globally; training must not depend on it
    return train_cam(training_plan(params), tmp_path / name / "cam.pt", tmp_path / name / "curves",
                     run_root=tmp_path / name / "runs", progress=False,
                     live_factory=NullLive, **kw)


def test_interrupted_run_resumes_to_identical_weights(tiny_root, tmp_path):
    params = tiny_params(tiny_root)
    _train(params, tmp_path, "full")
    part = _train(params, tmp_path, "resumed", stop_after_epoch=1)
    assert part == {"interrupted_at_epoch": 1}
    assert not (tmp_path / "resumed" / "cam.pt").exists()  # no partial output
    assert list((tmp_path / "resumed" / "runs").glob("*/last.pt"))
    summary = _train(params, tmp_path, "resumed")
    assert summary["epochs"] == 2
    full = load_checkpoint(tmp_path / "full" / "cam.pt", {"kind": "cam"})["model"]
    resumed = load_checkpoint(tmp_path / "resumed" / "cam.pt", {"kind": "cam"})["model"]
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    assert not list((tmp_path / "resumed" / "runs").glob("*/last.pt"))  # cleaned up


def test_methods_train_differently(tiny_root, tmp_path, monkeypatch):
    """transcam never computes L_M** (it would raise here) and logs loss = loss_cls; bnr
    computes it at every step and ends with other weights."""
    import bnr.cam.losses as losses

    real_bnr_loss, calls = losses.bnr_loss, []

    def counted(*args, **kwargs):
        calls.append(1)
        return real_bnr_loss(*args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("method=transcam computed the BNR loss")

    monkeypatch.setattr(losses, "bnr_loss", forbidden)
    a = _train(tiny_params(tiny_root, method="transcam"), tmp_path, "t")
    monkeypatch.setattr(losses, "bnr_loss", counted)
    b = _train(tiny_params(tiny_root, method="bnr", noise_scale=2.0), tmp_path, "b")
    assert "loss_bnr" not in a["history"][0] and "loss_bnr" in b["history"][0]
    assert all(h["loss"] == pytest.approx(h["loss_cls"]) for h in a["history"])
    assert len(calls) >= 4  # 2 epochs x 2 batches
    ta = load_checkpoint(tmp_path / "t" / "cam.pt", {"kind": "cam"})["model"]
    tb = load_checkpoint(tmp_path / "b" / "cam.pt", {"kind": "cam"})["model"]
    assert any(not torch.equal(ta[k], tb[k]) for k in ta)


def test_nan_loss_stops_with_step_and_terms(tiny_root, tmp_path, monkeypatch):
    real = training.total_loss

    def nan_loss(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        return loss * float("nan"), {**parts, "loss": float("nan")}

    monkeypatch.setattr(training, "total_loss", nan_loss)
    with pytest.raises(BnrError, match=r"loss is not finite at epoch 1, iteration 1 \(loss_cls="):
        _train(tiny_params(tiny_root), tmp_path, "nan")
    assert not (tmp_path / "nan" / "cam.pt").exists()


def test_resume_checkpoint_from_another_preset_is_refused(tiny_root, tmp_path):
    params = tiny_params(tiny_root)
    _train(params, tmp_path, "x", stop_after_epoch=1)
    ckpt = next((tmp_path / "x" / "runs").glob("*/last.pt"))
    state = torch.load(ckpt, weights_only=True)
    state["meta"]["num_classes"] = 21
    torch.save(state, ckpt)
    with pytest.raises(BnrError, match=r"last.pt: checkpoint was made with num_classes=21"):
        _train(params, tmp_path, "x")
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(BnrError, match=r"last.pt: unreadable checkpoint"):
        _train(params, tmp_path, "x")


def test_wrong_pretrained_file_is_refused(tiny_root, tmp_path):
    bad = tmp_path / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, bad)
    raw_params = tiny_params(tiny_root)
    params = dataclasses.replace(raw_params, train_cam=dataclasses.replace(raw_params.train_cam,
                                                             pretrained=str(bad)))
    with pytest.raises(BnrError, match="weights.pth"):
        _train(params, tmp_path, "p")


def test_seed_inference_and_sweep(tiny_root, tmp_path):
    params = tiny_params(tiny_root)
    _train(params, tmp_path, "s")
    plan = training_plan(params)
    model = build_cam_model(plan.model, plan.dataset, plan.init, plan.weights)
    load_state_strict(
        model, load_checkpoint(tmp_path / "s" / "cam.pt", {"kind": "cam"})["model"], "cam.pt")
    from bnr.data.voc import VocSegmentation

    ds = VocSegmentation(tiny_root, "train", ("background", *"abcdef"), with_mask=False)
    out = tmp_path / "cams"
    assert infer_split_cams(model, ds, out, [32], patch_multiple=8, resample="pil_bicubic",
                            progress=False) == 8
    classes, cams = load_cams(out, ds.ids[0], (32, 32))
    assert list(classes) == ds.labels[ds.ids[0]] and cams.shape == (len(classes), 32, 32)
    assert cams.dtype == np.float32 and cams.min() >= 0 and cams.max() <= 1.001
    confs = seed_miou_sweep(out, tiny_root, ds.ids, "SegmentationClass", 7,
                            threshold_grid(0, 0.5, 0.1), progress=False)
    assert confs.shape == (6, 7, 7)
    assert len(set(confs.sum(axis=(1, 2)).tolist())) == 1  # same pixels at every threshold
    (out / f"{ds.ids[3]}.npz").unlink()
    with pytest.raises(BnrError, match=rf"{ds.ids[3]}.npz: CAM file missing for image"):
        seed_miou_sweep(out, tiny_root, ds.ids, "SegmentationClass", 7,
                        threshold_grid(0, 0.5, 0.1), progress=False)


def test_bfloat16_channels_last_runtime_trains_in_float32_weights(tiny_root, tmp_path):
    """The GPU defaults (bf16 autocast + channels_last) exercised on the CPU: finite losses,
    float32 weights in a checkpoint that loads into a plain model."""
    from bnr.runtime import Runtime

    runtime = Runtime(torch.device("cpu"), "bfloat16", channels_last=True)
    params = tiny_params(tiny_root)
    summary = _train(params, tmp_path, "bf16", runtime=runtime)
    assert all(np.isfinite(h["loss"]) for h in summary["history"])
    state = load_checkpoint(tmp_path / "bf16" / "cam.pt", {"kind": "cam"})["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    plan = training_plan(params)
    load_state_strict(build_cam_model(plan.model, plan.dataset, plan.init), state, "cam.pt")
