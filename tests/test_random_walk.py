"""Random walk: sparse propagation equals PSA's dense formulation; score preparation; labels."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bnr.affinity import random_walk
from bnr.affinity.random_walk import (
    affinity_parts,
    cams_with_background,
    downsample_scores,
    random_walk_dense,
    random_walk_segmentation,
    random_walk_sparse,
    transition_dense,
)
from bnr.errors import BnrError
from bnr.models.pairs import pair_indices

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("one_torch_thread")]


@pytest.mark.parametrize(
    ("h", "w", "beta", "logt", "dtype", "tol"),
    [
        (9, 13, 14, 7, torch.float64, 1e-10),
        (9, 13, 8, 8, torch.float64, 1e-10),
        (10, 12, 14, 5, torch.float32, 1e-5),
        (7, 9, 8, 3, torch.float32, 1e-5),
    ],
)
def test_sparse_equals_dense(
    h: int, w: int, beta: float, logt: int, dtype: torch.dtype, tol: float
) -> None:
    g = torch.Generator().manual_seed(h * w + logt)
    src, dst = pair_indices(h, w, 5)
    aff = (0.5 + 0.5 * torch.rand(src.numel(), generator=g)).to(dtype)
    cams = torch.rand(5, h, w, generator=g).to(dtype)
    sparse = random_walk_sparse(cams, aff, src, dst, beta=beta, logt=logt)
    dense = random_walk_dense(cams, aff, src, dst, beta=beta, logt=logt)
    assert sparse.shape == dense.shape == (5, h, w)
    assert sparse.dtype == dtype
    scale = dense.abs().max()
    assert ((sparse - dense).abs().max() / scale).item() < tol


def test_transition_is_column_stochastic_with_self_loops() -> None:
    src, dst = pair_indices(5, 9, 5)
    aff = torch.full((src.numel(),), 0.9, dtype=torch.float64)
    t = transition_dense(aff, src, dst, 45, beta=2)
    torch.testing.assert_close(t.sum(dim=0), torch.ones(45, dtype=torch.float64))
    a = t @ torch.diag(1 / torch.diag(t))  # undo D^-1: diag(T) = 1 / d_j because A_jj = 1
    torch.testing.assert_close(a, a.T)
    torch.testing.assert_close(torch.diag(a), torch.ones(45, dtype=torch.float64))
    assert a[4, 5].item() == pytest.approx(0.81)  # (0,4)-(0,5): 0.9 ** 2
    assert a[0, 1].item() == 0.0  # (0,0)-(0,1) is outside PSA's cropped pair set


def _valid_csr(m: torch.Tensor) -> None:
    """int32 indices, and torch's CSR invariants (sorted, in-range columns per row) hold."""
    assert m.layout == torch.sparse_csr
    assert m.crow_indices().dtype == m.col_indices().dtype == torch.int32
    torch.sparse_csr_tensor(
        m.crow_indices(), m.col_indices(), m.values(), m.shape, check_invariants=True
    )


def test_affinity_parts_make_the_transition() -> None:
    """The walk's parts: D^-1 (I + U + U^T) = T^T, built directly as int32 CSR."""
    g = torch.Generator().manual_seed(0)
    src, dst = pair_indices(7, 11, 5)
    aff = (0.5 + 0.5 * torch.rand(src.numel(), generator=g)).double()
    upper, lower, deg = affinity_parts(aff, src, dst, 77, beta=3)
    for m in (upper, lower):
        _valid_csr(m)
    assert upper._nnz() == lower._nnz() == src.numel()  # self-loops are not stored
    torch.testing.assert_close(lower.to_dense(), upper.to_dense().T)
    a = torch.eye(77, dtype=torch.float64) + upper.to_dense() + lower.to_dense()
    torch.testing.assert_close(deg, a.sum(dim=1))
    t = transition_dense(aff, src, dst, 77, beta=3)
    torch.testing.assert_close(a / deg[:, None], t.T)


@pytest.mark.parametrize("int32_max", [5000, 100])  # int64 keys only; int64 keys and indices
def test_sparse_falls_back_to_int64_when_int32_overflows(
    monkeypatch: pytest.MonkeyPatch, int32_max: int
) -> None:
    """Big grids (N (N + 1) > 2^31 - 1, over 46340 nodes) sort int64 keys: same walk."""
    g = torch.Generator().manual_seed(1)
    src, dst = pair_indices(9, 13, 5)  # N = 117, P = 850
    aff = (0.5 + 0.5 * torch.rand(src.numel(), generator=g)).double()
    cams = torch.rand(3, 9, 13, generator=g).double()
    expected = random_walk_sparse(cams, aff, src, dst, logt=5)
    monkeypatch.setattr(random_walk, "_INT32_MAX", int32_max)
    upper, _, _ = affinity_parts(aff, src, dst, 117, beta=14)
    want = torch.int32 if int32_max > src.numel() else torch.int64
    assert upper.col_indices().dtype == upper.crow_indices().dtype == want
    out = random_walk_sparse(cams, aff, src, dst, logt=5)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)
    dense = random_walk_dense(cams, aff, src, dst, logt=5)
    assert ((out - dense).abs().max() / dense.abs().max()).item() < 1e-10


@pytest.mark.parametrize("walk", [random_walk_sparse, random_walk_dense])
def test_walks_reject_negative_pair_indices(walk) -> None:
    src, dst = pair_indices(6, 10, 5)
    with pytest.raises(BnrError, match="negative"):
        walk(torch.rand(2, 6, 10), torch.rand(src.numel()), src, dst - 60)


def test_bench_core_comparison_agrees() -> None:
    """Smoke test of bench/random_walk.py's comparison on a small grid (no timings)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "random_walk.py"
    spec = importlib.util.spec_from_file_location("bench_random_walk", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    rel, agree = bench.compare(96, 5)
    assert rel < bench.REL_TOL and agree == 1.0


def test_scores_with_background() -> None:
    cams = np.array([[[0.2, 1.0]], [[0.5, 0.0]]], np.float32)
    fixed = cams_with_background(cams, bg_score=0.42)
    assert fixed.shape == (3, 1, 2)
    torch.testing.assert_close(fixed[0], torch.full((1, 2), 0.42))


def test_downsample_pads_with_zeros_then_averages() -> None:
    scores = torch.ones(1, 3, 10)
    down = downsample_scores(scores, 8)
    assert down.shape == (1, 1, 2)
    torch.testing.assert_close(down[0, 0], torch.tensor([24 / 64, 6 / 64]))


def _two_region_affinities(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    src, dst = pair_indices(h, w, 5)
    left = (src % w) < w // 2
    same = left == ((dst % w) < w // 2)
    aff = torch.where(same, torch.tensor(0.99), torch.tensor(0.01))
    return aff, src, dst


@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_segmentation_spreads_a_seed_over_its_region(method: str) -> None:
    h, w = 10, 16  # node grid; image 80 x 128
    aff, src, dst = _two_region_affinities(h, w)
    cams = np.zeros((1, 80, 128), np.float32)
    cams[0, 16:64, 8:48] = 1.0  # a seed covering about half of the left region only
    labels = random_walk_segmentation(
        cams, [12], aff, src, dst, beta=8, logt=6, bg_score=0.2, method=method
    )
    assert labels.shape == (80, 128) and labels.dtype == np.uint8
    # spread over the left half (PSA's cropped pair set leaves a few corner nodes isolated,
    # e.g. the first 4 nodes of the top row, so rows near the top/bottom edge are skipped)
    assert (labels[16:64, :56] == 12).all()
    assert (labels[:, 72:] == 0).all()  # the right half stays background


def test_segmentation_sparse_matches_dense_labels() -> None:
    g = torch.Generator().manual_seed(3)
    h, w = 8, 11
    src, dst = pair_indices(h, w, 5)
    aff = 0.6 + 0.4 * torch.rand(src.numel(), generator=g)
    cams = torch.rand(2, 60, 85, generator=g).numpy()
    kw = {"beta": 14, "logt": 7, "bg_score": 0.42}
    a = random_walk_segmentation(cams, [1, 4], aff, src, dst, method="sparse", **kw)
    b = random_walk_segmentation(cams, [1, 4], aff, src, dst, method="dense", **kw)
    assert a.shape == (60, 85)
    assert (a == b).mean() > 0.999
    assert set(np.unique(a)) <= {0, 1, 4}


def test_mismatched_pairs_raise() -> None:
    src, dst = pair_indices(6, 10, 5)
    with pytest.raises(BnrError, match="affinities for"):
        random_walk_sparse(torch.rand(2, 6, 10), torch.rand(3), src, dst)
    with pytest.raises(BnrError, match="exceed"):
        random_walk_dense(torch.rand(2, 5, 10), torch.rand(src.numel()), src, dst)


def test_segmentation_class_count_is_explicit() -> None:
    src, dst = pair_indices(6, 10, 5)
    aff = torch.rand(src.numel())
    cams = np.zeros((1, 48, 80), np.float32)
    with pytest.raises(BnrError, match=r"1\.\.3"):
        random_walk_segmentation(cams, [4], aff, src, dst, n_labels=4)


def test_upscaled_image_and_cams_for_the_walk() -> None:
    from bnr.affinity.walk import upscaled

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    cams = rng.random((2, 12, 20)).astype(np.float32)
    same = upscaled(image, cams, 1)
    assert same[0] is image and same[1] is cams
    big, big_cams = upscaled(image, cams, 4)
    assert big.shape == (48, 80, 3) and big.dtype == np.uint8
    assert big_cams.shape == (2, 48, 80) and big_cams.dtype == np.float32
    # bilinear (half-pixel centres): the mean survives, values stay in the input's range
    assert abs(float(big_cams.mean()) - float(cams.mean())) < 0.02
    assert big_cams.min() >= cams.min() - 1e-6 and big_cams.max() <= cams.max() + 1e-6
