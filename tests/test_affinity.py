"""Affinity labels, PSA pair sets and the AffinityNet loss on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bnr.affinity.affinity_labels import (
    affinity_labels_from_cam,
    affinity_loss,
    cam_labels,
    combine_affinity_labels,
    pair_labels,
)
from bnr.errors import BnrError
from bnr.models.pairs import pair_affinity, pair_indices, pair_offsets

pytestmark = pytest.mark.numerics  # float kernels: CI runs it again under AVX2


def _identity_crf(image: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
    assert n_labels == 21
    return labels


# ---------------------------------------------------------------------------- pairs


def test_offsets_radius_5_hand_count() -> None:
    # dy = 0: dx 1..4 (4); dy = 1, 2: |dx| <= 4 (9 + 9); dy = 3: |dx| <= 3 (7);
    # dy = 4: |dx| <= 2 (5)
    assert len(pair_offsets(5)) == 4 + 9 + 9 + 7 + 5 == 34
    assert pair_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]


@pytest.mark.parametrize(("h", "w", "radius", "hand"), [(5, 9, 5, 34), (6, 10, 5, 4 * 34)])
def test_pair_count_tiny_grid(h: int, w: int, radius: int, hand: int) -> None:
    src, dst = pair_indices(h, w, radius)
    assert src.numel() == dst.numel() == hand
    # 5x9 at radius 5: the only from-pixel is (0, 4), the centre column
    if (h, w) == (5, 9):
        assert set(src.tolist()) == {4}


def test_pairs_match_brute_force_and_are_unique() -> None:
    h, w, r = 7, 11, 3
    src, dst = pair_indices(h, w, r)
    brute = set()
    for y in range(0, h - r + 1):
        for x in range(r - 1, w - r + 1):
            for y2 in range(h):
                for x2 in range(w):
                    after = y2 > y or (y2 == y and x2 > x)
                    if after and (y2 - y) ** 2 + (x2 - x) ** 2 < r * r:
                        brute.add((y * w + x, y2 * w + x2))
    got = list(zip(src.tolist(), dst.tolist(), strict=True))
    assert len(got) == len(set(got)) == len(brute)
    assert set(got) == brute
    unordered = {frozenset(p) for p in got}
    assert len(unordered) == len(got)  # each unordered pair once


def test_pair_layout_is_offset_major() -> None:
    src, dst = pair_indices(6, 10, 5)  # 2 x 2 from-pixels
    n_from = 4
    assert src[:n_from].tolist() == [4, 5, 14, 15]
    assert (dst[:n_from] - src[:n_from]).tolist() == [1] * 4  # offset (0, 1)
    assert (dst[n_from : 2 * n_from] - src[:n_from]).tolist() == [2] * 4  # offset (0, 2)


def test_pairs_too_small_grid() -> None:
    with pytest.raises(BnrError, match="too small for affinity radius 5"):
        pair_indices(4, 20, 5)


def test_pair_affinity_hand() -> None:
    f = torch.zeros(1, 2, 2, 3)
    f[0, :, 0, 1] = torch.tensor([1.0, 3.0])  # the only from-pixel at radius 2
    f[0, :, 0, 2] = torch.tensor([0.0, 0.0])
    f[0, :, 1, 0] = torch.tensor([1.0, 3.0])
    src, dst = pair_indices(2, 3, 2)
    aff = pair_affinity(f, src, dst)
    # pairs: (0,1)-(0,2), (0,1)-(1,0), (0,1)-(1,1), (0,1)-(1,2)
    assert aff.shape == (1, 4)
    e2 = math.exp(-2)
    torch.testing.assert_close(aff[0], torch.tensor([e2, 1.0, e2, e2]))


def test_pair_labels_hand() -> None:
    src, dst = pair_indices(2, 3, 2)  # from (0, 1) to (0, 2), (1, 0), (1, 1), (1, 2)
    bg, fg, neg = pair_labels(np.array([[0, 0, 1], [255, 1, 0]], np.uint8), src, dst)
    assert bg.tolist() == [False, False, False, True]
    assert fg.tolist() == [False, False, False, False]
    assert neg.tolist() == [True, False, True, False]
    bg, fg, neg = pair_labels(torch.tensor([[[2, 2, 2], [2, 0, 255]]]), src, dst)
    assert bg.shape == (1, 4)
    assert bg[0].tolist() == [False] * 4
    assert fg[0].tolist() == [True, True, False, False]
    assert neg[0].tolist() == [False, False, True, False]


# ---------------------------------------------------------------------------- loss


def test_affinity_loss_hand() -> None:
    aff = torch.tensor([[0.5, 0.9, 0.2, 0.7]], requires_grad=True)
    bg = torch.tensor([[True, False, False, False]])
    fg = torch.tensor([[False, True, False, False]])
    neg = torch.tensor([[False, False, True, True]])
    loss, parts = affinity_loss(aff, bg, fg, neg)
    e = 1e-5
    want_bg = -math.log(0.5 + e) / (1 + e)
    want_fg = -math.log(0.9 + e) / (1 + e)
    want_neg = (-math.log(1 + e - 0.2) - math.log(1 + e - 0.7)) / (2 + e)
    assert parts["bg"].item() == pytest.approx(want_bg, rel=1e-5)
    assert parts["fg"].item() == pytest.approx(want_fg, rel=1e-5)
    assert parts["neg"].item() == pytest.approx(want_neg, rel=1e-5)
    assert loss.item() == pytest.approx(want_bg / 4 + want_fg / 4 + want_neg / 2, rel=1e-5)
    assert parts["neg_count"].item() == 2
    loss.backward()
    assert torch.isfinite(aff.grad).all()


def test_affinity_loss_empty_terms_are_zero() -> None:
    aff = torch.tensor([[0.3, 1.0]], requires_grad=True)
    none = torch.zeros(1, 2, dtype=torch.bool)
    loss, parts = affinity_loss(aff, torch.tensor([[True, True]]), none, none)
    assert parts["fg"].item() == 0.0 and parts["neg"].item() == 0.0
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(aff.grad).all()
    loss, _ = affinity_loss(aff, none, none, none)
    assert loss.item() == 0.0


# ---------------------------------------------------------------------------- labels


def test_combine_rules_hand() -> None:
    la = np.array([0, 0, 3, 3], np.uint8)
    ha = np.array([0, 3, 0, 3], np.uint8)
    assert combine_affinity_labels(la, ha).tolist() == [0, 255, 3, 3]  # PSA's rule: [0, 255, 0, 3]


def test_cam_labels_ties_go_to_background() -> None:
    cams = np.array([[[0.6, 0.7]], [[0.2, 0.7]]], np.float32)  # classes 5 and 9
    assert cam_labels(cams, [5, 9], 0.6).tolist() == [[0, 5]]


def test_affinity_labels_hand_case() -> None:
    # 16 x 16 image; class 3 CAM: 0.9 (top-left), 0.4 (top-right), 0.1 (bottom half).
    # la (bg 0.60): 3 / 0 / 0; ha (bg 0.25): 3 / 3 / 0 -> 3 / ignore / background.
    cams = np.zeros((1, 16, 16), np.float32)
    cams[0, :8, :8], cams[0, :8, 8:], cams[0, 8:] = 0.9, 0.4, 0.1
    image = np.zeros((16, 16, 3), np.uint8)
    full = affinity_labels_from_cam(image, cams, [3], n_labels=21, crf_fn=_identity_crf, stride=1)
    assert full.shape == (16, 16) and full.dtype == np.uint8
    assert np.all(full[:8, :8] == 3) and np.all(full[:8, 8:] == 255) and np.all(full[8:] == 0)
    small = affinity_labels_from_cam(image, cams, [3], n_labels=21, crf_fn=_identity_crf)
    assert small.tolist() == [[3, 255], [0, 0]]
    odd = affinity_labels_from_cam(
        image[:13, :11], cams[:, :13, :11], [3], n_labels=21, crf_fn=_identity_crf
    )
    assert odd.shape == (2, 2)  # ceil(13 / 8), ceil(11 / 8): the AffinityNet map size


def test_affinity_labels_with_real_crf() -> None:
    rng = np.random.default_rng(0)
    image = np.full((24, 32, 3), 30, np.uint8)
    image[6:18, 8:24] = 220  # a bright object
    cams = np.zeros((2, 24, 32), np.float32)
    cams[0, 6:18, 8:24] = 0.95
    cams[1] = rng.random((24, 32)) * 0.1  # a weak second class
    out = affinity_labels_from_cam(image, cams, [7, 15], n_labels=21, stride=8)
    assert out.shape == (3, 4) and out.dtype == np.uint8
    assert out[1, 1] == 7 and out[0, 0] == 0
    assert set(np.unique(out)) <= {0, 7, 15, 255}


def test_affinity_labels_bad_input() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(BnrError, match="class keys"):
        affinity_labels_from_cam(
            image, np.zeros((1, 8, 8)), [0], n_labels=21, crf_fn=_identity_crf
        )
    with pytest.raises(BnrError, match="cams must be"):
        affinity_labels_from_cam(
            image, np.zeros((1, 4, 8)), [1], n_labels=21, crf_fn=_identity_crf
        )


def test_radius_shrinks_on_small_maps_as_transcam() -> None:
    """TransCAM resnet38_aff.Net.forward: short side m < 2 r + 1 -> radius (m - 1) // 2."""
    from bnr.affinity.random_walk import random_walk_sparse
    from bnr.models.pairs import feature_affinity, shrunk_radius

    assert [shrunk_radius(h, w, 5) for h, w in ((56, 56), (11, 40), (10, 40), (40, 9), (5, 6),
                                               (4, 60))] == [5, 5, 4, 4, 2, 1]
    # radius 4: 3 offsets (0, 1..3) + 7 (dy 1) + 7 (dy 2) + 5 (dy 3, |dx| <= 2) = 22, on
    # (9 - 3) x (40 - 2 * 3) = 6 x 34 from-pixels
    aff, src, dst = feature_affinity(torch.randn(2, 4, 9, 40), 5, shrink=True)
    assert len(pair_offsets(4)) == 22 and aff.shape == (2, 22 * 6 * 34)
    assert src.shape == dst.shape == (22 * 6 * 34,)
    aff, src, dst = feature_affinity(torch.randn(1, 4, 4, 60), 5, shrink=True)  # no pairs
    assert aff.shape == (1, 0) and src.numel() == dst.numel() == 0
    cams = torch.rand(3, 4, 60)
    assert torch.allclose(random_walk_sparse(cams, aff[0], src, dst), cams)  # identity walk
    with pytest.raises(BnrError, match="too small"):  # training keeps its radius
        feature_affinity(torch.randn(1, 4, 4, 60), 5)
