"""bench/gpu_check.py in its CPU smoke mode: every section runs and reports positive, finite
numbers (this checks that the script works, never its timings)."""

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
    bench = _load()
    from bnr.models.conformer import create_conformer

    torch.manual_seed(1)
    model = create_conformer("conformer_tiny", 21).eval()
    image = torch.randn(3, 40, 48, generator=torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")
    for bf16 in (False, True):
        cams = bench.seed_cams(model, image, range(1, 21), (32, 64), cpu, bf16, True, 8)
        assert cams.shape == (20, 40, 48) and cams.dtype == torch.float32
        assert float(cams.max()) > 0 and torch.isfinite(cams).all()


def test_budget_shrinks_timed_iterations() -> None:
    bench = _load()
    calls = []
    n, elapsed = bench.timed_loop(lambda: calls.append(1), torch.device("cpu"), 2, 50,
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
