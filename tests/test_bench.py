"""Smoke tests of the benchmark scripts' core comparisons on tiny inputs (no timing checks)."""

import importlib.util
import sys

import numpy as np
import torch

from tests.conftest import REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_seed_inference_stacking_equals_accumulated():
    bench = _load("seed_inference")
    # same kernels, summed block by block or stacked: measured 0 under the default kernels,
    # ONEDNN_MAX_CPU_ISA=AVX2 / SSE41, ATEN_CPU_CAPABILITY=default / avx2, 1 and 2 threads
    assert bench.compare("conformer_tiny", 64) <= 1e-4


def test_seed_inference_batched_passes_agree():
    bench = _load("seed_inference")
    model = bench.build("conformer_tiny", 5)
    images = [torch.randn(3, 40, 48, generator=torch.Generator().manual_seed(0))]
    a = bench.seed_maps(model, images, True, (32, 64))
    b = bench.seed_maps(model, images, False, (32, 64))
    # float32, batch of 2 against 2 batches of 1 (other kernel blocking). The M* of a random
    # network is a near-constant offset, so min-max normalisation magnifies rounding: measured
    # max |diff| 2.8e-5-5.7e-5 on an AMD EPYC under the default kernels, ONEDNN_MAX_CPU_ISA=
    # AVX2 / SSE41, ATEN_CPU_CAPABILITY=default / avx2, 1 and 2 threads; atol 1e-3 (18x).
    assert torch.allclose(a[0], b[0], atol=1e-3)


def test_confusion_bincount_equals_loop():
    ours, ref = _load("confusion").compare(3)
    assert np.array_equal(ours, ref)
    assert ours.sum() > 0


def test_crf_pool_workers_agree():
    in_process, pooled = _load("crf_pool").compare(3, 32, (0, 2))
    assert [i for i, _ in in_process] == [i for i, _ in pooled]
    for (_, a), (_, b) in zip(in_process, pooled, strict=True):
        assert np.array_equal(a, b)


def test_data_loader_workers_agree():
    (ids0, labels0), (ids2, labels2) = _load("data_loader").compare(4, (0, 2), 2)
    assert ids0 == ids2 and len(ids0) == 4
    assert torch.equal(labels0, labels2)


def test_threads_bench_steps_and_table():
    bench = _load("threads")
    times = bench.step_times(batch=2, size=32, steps=2, warmup=0)
    assert len(times) == 2 and all(t > 0 for t in times)
    rows = {"all_cores": {"idle": 0.2, "loaded": 1.0, "threads": [2, 2]},
            "auto": {"idle": 0.2, "loaded": 0.4, "threads": [2, 1]}}
    text = bench.table(rows)
    assert "| auto | 2/1 | 0.200 | 0.400 | 2.00 | 1.00 |" in text
