"""Segmenter test-time inference against TransCAM's test_deeplab.py, on hand-computed cases."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from bnr.config.params import load_params
from bnr.segmenter import test_time
from bnr.segmenter.test_time import (
    multiscale_predict,
    predict_labels,
    rescale,
    upsample_logits,
)
from bnr.steps.evaluate import prediction_options

pytestmark = pytest.mark.numerics  # float kernels: CI runs it again under AVX2

REPO = Path(__file__).resolve().parents[1]


class _ScaleLogits(torch.nn.Module):
    """Constant 2-class logits at 1/8: (0, 4) for the full-size pass, (0, 0) otherwise."""

    def __init__(self, full_width: int) -> None:
        super().__init__()
        self.full_width = full_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        out = torch.zeros(b, 2, -(-h // 8), -(-w // 8))
        if w == self.full_width:
            out[:, 1] = 4.0
        return out


def test_logits_are_averaged_before_softmax() -> None:
    image = torch.zeros(3, 16, 16)
    model = _ScaleLogits(16)
    got = multiscale_predict(model, image, [1.0, 0.5], flip=False)  # TransCAM default
    # mean logits (0, 2) -> softmax: 1 / (1 + e^2) = 0.11920, e^2 / (1 + e^2) = 0.88080
    assert torch.allclose(got[:, 5, 5], torch.tensor([0.11920, 0.88080]), atol=1e-5)
    ours = multiscale_predict(model, image, [1.0, 0.5], flip=False, average="probs")
    # mean of softmax(0, 4) = (0.01799, 0.98201) and softmax(0, 0) = (0.5, 0.5)
    assert torch.allclose(ours[:, 5, 5], torch.tensor([0.25900, 0.74100]), atol=1e-5)


def test_align_corners_upsampling() -> None:
    logits = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    corners = upsample_logits(logits, (1, 4), (1, 4), align_corners=True)
    assert torch.allclose(corners.flatten(), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    half_pixel = upsample_logits(logits, (1, 4), (1, 4), align_corners=False)
    assert torch.allclose(half_pixel.flatten(), torch.tensor([0.0, 0.25, 0.75, 1.0]))
    # two steps (model: to the rescaled input, collection: to the image), as TransCAM
    two = upsample_logits(logits, (1, 3), (1, 5), align_corners=True)
    assert torch.allclose(two.flatten(), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


def _cubic(d: float, a: float = -0.75) -> float:
    d = abs(d)
    if d <= 1:
        return (a + 2) * d**3 - (a + 3) * d**2 + 1
    return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a if d < 2 else 0.0


def test_bicubic_rescale_uses_cv2_size_and_mapping() -> None:
    row = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 5).expand(1, 3, 6, 5)
    out = rescale(row.contiguous(), 1.5, "bicubic")
    assert out.shape[-2:] == (9, 8)  # cv2 sizes: round(6 * 1.5) = 9, round(7.5) = 8 (to even)
    # output column 3 reads source x = (3 + 0.5) / 1.5 - 0.5 = 11/6 (cv2 fx mapping): the
    # sample at x = 2 is 1/6 away; the in/out ratio 5/8 would read x = 1.6875 instead
    assert out[0, 0, 0, 3].item() == pytest.approx(_cubic(1 / 6), abs=1e-5)
    assert out[0, 0, 0, 3].item() != pytest.approx(_cubic(2 - 1.6875), abs=1e-3)
    same = torch.randn(1, 3, 9, 10)
    assert torch.equal(rescale(same, 1.0), same)  # cv2 copies an unchanged size


def test_default_test_crf_is_transcam_probability_crf(monkeypatch: pytest.MonkeyPatch) -> None:
    params = load_params(REPO / "params.yaml")
    opts = prediction_options(params)
    assert opts["crf_form"] == "probability" and opts["average"] == "logits"
    assert opts["align_corners"] is True and opts["resize"] == "bicubic"
    assert opts["crf"] == {"gauss_sxy": 3, "gauss_compat": 3, "bilateral_sxy": 32,
                           "bilateral_srgb": 13, "bilateral_compat": 10, "iterations": 1}
    seen = {}

    def fake_crf(image: np.ndarray, probs: np.ndarray, **kw: float) -> np.ndarray:
        seen.update(kw, probs=probs)
        return probs[::-1].copy()  # swaps the two classes: the labels follow the CRF output

    monkeypatch.setattr(test_time, "dense_crf_probs", fake_crf)
    image = np.zeros((16, 16, 3), np.uint8)
    opts = {**opts, "scales": (1.0,), "flip": False}
    labels = predict_labels(_ScaleLogits(16), image, **opts)
    assert (labels == 0).all()  # class 1 wins before the (fake) CRF, class 0 after it
    assert np.allclose(seen["probs"][:, 0, 0], [0.017986, 0.982014], atol=1e-5)  # softmax
    assert seen["iterations"] == 1 and seen["bilateral_sxy"] == 32


def test_probability_crf_changes_with_the_iterations() -> None:
    pytest.importorskip("pydensecrf")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
    probs = torch.from_numpy(rng.random((3, 20, 24)).astype(np.float32)).softmax(0).numpy()
    crf = dataclasses.asdict(load_params(REPO / "params.yaml").evaluate.test_crf)
    one = test_time.dense_crf_probs(image, probs, **crf)
    ten = test_time.dense_crf_probs(image, probs, **{**crf, "iterations": 10})
    assert one.shape == (3, 20, 24) and not np.allclose(one, ten)
