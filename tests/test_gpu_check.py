"""bench/gpu_check.py in its CPU smoke mode: every section runs and reports positive, finite
numbers (this checks that the script works, never its timings); its seed mIoU section scores
seeds exactly as the infer_seeds and eval_seeds steps do."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.numerics  # float kernels: CI runs it again under AVX2


@functools.cache
def _load() -> ModuleType:
    path = REPO / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("bench_gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict, str]:
    bench = _load()
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):  # in-process run (module scope: capsys can't)
        rc = bench.main(["--device", "cpu", "--smoke", "--json", str(out)])
    return rc, json.loads(out.read_text()), text.getvalue()


def test_smoke_runs_every_section(smoke: tuple[int, dict, str]) -> None:
    rc, data, text = smoke
    sections = data["sections"]
    assert rc == 0, {k: v.get("error") for k, v in sections.items()}
    assert set(sections) == {"train", "infer", "miou", "rw", "projection"}
    bench_files = (REPO / "models" / "cam.pt").is_file() and (REPO / "data" / "synthetic").is_dir()
    for name, result in sections.items():
        if name == "miou" and not bench_files:  # optional: needs the pipeline's outputs
            assert result["status"] == "skipped" and result["skipped"]
        else:
            assert result["status"] == "ok", (name, result)
    for key in ("gpu", "torch", "date"):
        assert data["header"][key]
    assert "# GPU check" in text and "total" in text


def test_smoke_numbers_are_positive_and_finite(smoke: tuple[int, dict, str]) -> None:
    _, data, text = smoke
    s = data["sections"]
    train = s["train"]["rows"]
    assert len(train) == 2
    for row in train:
        assert _positive(row["images_per_s"]) and _positive(row["step_s"])
        assert math.isfinite(row["last_loss"])
        assert row["peak_mib"] is None  # CPU: no allocator statistics
    assert _positive(s["train"]["speedup_bf16"])
    assert len(s["infer"]["rows"]) == 3
    assert all(_positive(r["images_per_s"]) for r in s["infer"]["rows"])
    assert _positive(s["infer"]["speedup"])
    assert math.isfinite(s["infer"]["max_abs_diff_bf16_vs_fp32"])
    if s["miou"]["status"] == "ok":
        assert s["miou"]["images"] >= 1
        for row in s["miou"]["rows"]:
            assert 0 <= row["best_miou"] <= 100 and math.isfinite(row["best_miou"])
        assert math.isfinite(s["miou"]["diff_points"])
    rw = s["rw"]["rows"]
    assert len(rw) == 6  # 2 sizes x (float32, bfloat16 forward) x walk on device + bf16 on CPU
    assert all(_positive(r["s_per_image"]) and _positive(r["walk_s"]) for r in rw)
    hours = [r["hours"] for r in s["projection"]["rows"]]
    assert len(hours) == 2 and all(_positive(h) for h in hours)
    assert isinstance(s["projection"]["target_met"], bool)
    for title in ("1. train_cam", "2. Seed inference", "3. Seed mIoU", "4. Random walk",
                  "5. Projected"):
        assert title in text
    assert text.count("|---|") >= 4  # the tables


def test_seed_cams_in_both_precisions(one_torch_thread: None) -> None:
    """Seed CAMs in float32 and in bfloat16 autocast come back as CPU float32 maps."""
    _load()
    from bench.gpu_check_cam import seed_cams, seed_item
    from bnr.cam.cam_model import build_cam_model

    torch.manual_seed(1)
    model = build_cam_model("conformer_tiny", "voc2012", "official").eval()
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    options = {"scales": (32, 64), "patch_multiple": model.cfg.patch_size,
               "resample": "pil_bicubic"}
    for bf16 in (False, True):
        classes, cams = seed_cams(model, seed_item(image, range(1, 21)), options,
                                  torch.device("cpu"), bf16)
        assert list(classes) == list(range(1, 21))
        assert cams.shape == (20, 40, 48) and cams.dtype == np.float32
        assert float(cams.max()) > 0 and np.isfinite(cams).all()


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, dict]:
    """The infer_seeds and eval_seeds steps (``run_step``) on a tiny synthetic set (48x48
    images, scales 32 and 64: both resampled) with a random CAM network saved where dvc.yaml
    puts models/cam.pt: (working directory, params, eval_seeds' numbers)."""
    import yaml

    from bnr.cam.cam_model import build_cam_model, cam_model_meta
    from bnr.checkpoints import save_checkpoint
    from bnr.config.params import parse_params
    from bnr.data.synthetic import SyntheticSpec, generate_synthetic
    from bnr.pipeline.stage import stage_paths
    from bnr.runtime import seed_torch
    from bnr.steps import infer_seeds
    from tests.conftest import run_step, update_dataset

    work = tmp_path_factory.mktemp("seeds")
    root = work / "data" / "synthetic"
    generate_synthetic(root, SyntheticSpec(num_train=4, num_val=1, image_size=48, clutter=2))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["dataset"] = "synthetic"
    raw["runtime"]["num_threads"] = 1
    raw["eval_seeds"]["overlays"] = 1
    update_dataset(raw, "synthetic", data={"root": str(root)}, infer_seeds={"scales": [32, 64]})
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = parse_params(raw)
    preset = params.per_dataset.train_cam.model
    inputs, _ = stage_paths(infer_seeds, REPO / "dvc.yaml", {"dataset": "synthetic"})
    seed_torch(0)
    model = build_cam_model(preset, "synthetic", params.per_dataset.train_cam.init)
    save_checkpoint(work / inputs.cam_checkpoint,
                    {"model": model.state_dict(), "meta": cam_model_meta(preset, "synthetic")})
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        try:
            run_step("infer_seeds", params)
            numbers = run_step("eval_seeds", params)
        finally:
            torch.set_num_threads(threads)
    return work, params, numbers


def test_seed_scoring_equals_eval_seeds(seed_run: tuple[Path, object, dict]) -> None:
    """Section 3 scores seeds as the pipeline does: its confusion matrices equal eval_seeds'
    sweep over infer_seeds' CAM files (same resampling, options, float16 storage, thresholds),
    and its float32 row reports eval_seeds' mIoU and threshold."""
    work, params, numbers = seed_run
    bench = _load()
    from bench.gpu_check_cam import seed_confusions
    from bnr.cam.cam_model import load_cam_model
    from bnr.cam.seeds import seed_miou_sweep
    from bnr.data.classes import class_names
    from bnr.data.voc import VocSegmentation
    from bnr.pipeline.stage import stage_paths
    from bnr.steps import eval_seeds, infer_seeds

    inputs, _ = stage_paths(eval_seeds, REPO / "dvc.yaml", {"dataset": "synthetic"})
    names, data = class_names("synthetic"), params.data
    ckpt = work / inputs.cam_checkpoint
    model = load_cam_model(ckpt, params.per_dataset.train_cam.model, "synthetic")
    dataset = VocSegmentation(data.root, data.seed_eval_split, names, mask_dir=data.gt_dir)
    thresholds = eval_seeds.sweep_thresholds(params)
    options = infer_seeds.seed_options(params, model.cfg.patch_size)
    ours = sum(seed_confusions(model, dataset[i], thresholds, len(names), options,
                               torch.device("cpu"), False) for i in range(len(dataset)))
    theirs = seed_miou_sweep(work / inputs.cams, Path(data.root), dataset.ids, data.gt_dir,
                             len(names), thresholds, progress=False)
    assert np.array_equal(ours, theirs)

    out = work / "gpu_check.json"
    with contextlib.redirect_stdout(io.StringIO()):
        rc = bench.main(["--device", "cpu", "--smoke", "--sections", "miou", "--json", str(out),
                         "--params", str(work / "params.yaml"), "--checkpoint", str(ckpt),
                         "--miou-images", str(len(dataset))])
    result = json.loads(out.read_text())["sections"]["miou"]
    assert rc == 0 and result["status"] == "ok", result
    fp32 = result["rows"][0]
    assert fp32["variant"] == "float32" and result["images"] == numbers["images"]
    assert round(fp32["best_miou"], 3) == numbers["miou"]
    assert fp32["best_threshold"] == numbers["best_threshold"]


def test_budget_shrinks_timed_iterations() -> None:
    _load()
    from bench.gpu_check_common import timed_loop

    calls = []
    n, elapsed = timed_loop(lambda: calls.append(1), torch.device("cpu"), 2, 50,
                            deadline=0.0, min_iters=3)  # deadline passed: the minimum
    assert n == 3 and len(calls) == 2 + 1 + 3 and elapsed >= 0


def test_sizes_parse() -> None:
    bench = _load()
    assert bench.parse_size("375x500") == (375, 500)
    assert bench.parse_size("512") == (512, 512)
    assert bench.default_json_path().name == "gpu_check.json"


def test_missing_checkpoint_is_skipped(tmp_path: Path) -> None:
    bench = _load()
    out = tmp_path / "g.json"
    rc = bench.main(["--device", "cpu", "--smoke", "--sections", "miou", "--json", str(out),
                     "--checkpoint", str(tmp_path / "absent.pt")])
    result = json.loads(out.read_text())["sections"]["miou"]
    assert rc == 0 and result["status"] == "skipped" and "not found" in result["skipped"]


def test_a_failing_section_does_not_stop_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = _load()

    def boom(*args: object) -> dict:
        raise RuntimeError("simulated CUDA failure")

    monkeypatch.setattr(bench, "section_infer", boom)
    out = tmp_path / "g.json"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        rc = bench.main(["--device", "cpu", "--smoke", "--sections", "infer,miou", "--json",
                         str(out), "--checkpoint", str(tmp_path / "absent.pt")])
    sections = json.loads(out.read_text())["sections"]
    assert rc == 1
    assert sections["infer"]["status"] == "error" and "simulated" in sections["infer"]["error"]
    assert sections["miou"]["status"] == "skipped"  # the next section still ran
    assert "ERROR: RuntimeError: simulated CUDA failure" in text.getvalue()
