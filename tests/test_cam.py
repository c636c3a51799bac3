import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnr.cam.maps import (
    cam_from_outputs,
    cams_to_seeds,
    multiscale_cam,
    normalize_cams,
    refine_cam,
)
from bnr.data.transforms import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.numerics  # float kernels: CI runs it again under AVX2


def test_refine_cam_matches_einsum():
    g = torch.Generator().manual_seed(1)
    cam = torch.randn(2, 5, 3, 4, generator=g)
    attn = torch.rand(2, 12, 12, generator=g)
    expected = torch.einsum("bij,bsj->bsi", attn, cam.reshape(2, 5, 12)).reshape(2, 5, 3, 4)
    torch.testing.assert_close(refine_cam(cam, attn), expected)
    # identity attention leaves the CAM unchanged; a shape mismatch is an error
    torch.testing.assert_close(refine_cam(cam, torch.eye(12).expand(2, 12, 12)), cam)
    with pytest.raises(ValueError, match="does not match"):
        refine_cam(cam, torch.rand(2, 10, 10))


def test_cams_to_seeds():
    cams = np.zeros((2, 2, 3), np.float32)
    cams[0] = [[0.9, 0.2, 0.1], [0.5, 0.0, 0.3]]
    cams[1] = [[0.1, 0.8, 0.05], [0.6, 0.0, 0.31]]
    seeds = cams_to_seeds(cams, [3, 7], threshold=0.3)
    np.testing.assert_array_equal(seeds, [[3, 7, 0], [7, 0, 7]])
    np.testing.assert_array_equal(cams_to_seeds(np.zeros((0, 2, 2)), [], 0.1), np.zeros((2, 2)))


def test_normalize_cams_range():
    cams = torch.rand(3, 5, 5) * 7 + 2
    out = normalize_cams(cams)
    assert float(out.amin()) == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(out.flatten(1).amax(1), torch.ones(3), atol=1e-4)


class FakeCamModel(nn.Module):
    """Patch-8 model whose CAM is a fixed linear map of the pooled image; random attention."""

    def __init__(self, classes=4, patch=8):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, classes, 1)
        torch.manual_seed(0)
        nn.init.normal_(self.proj.weight)

    def forward(self, x):
        cam = self.proj(F.avg_pool2d(x, self.patch))  # (B, S, h, w)
        n = cam.shape[2] * cam.shape[3]
        logits = torch.arange((n + 1) ** 2, dtype=torch.float32).reshape(n + 1, n + 1)
        attn = torch.softmax(torch.sin(logits) * 3, -1).expand(x.shape[0], n + 1, n + 1)
        return {"cam": cam, "attn_sum": attn * 2}


def _reference(model, image, classes, scales, flip):
    """One pass at a time, written out as the protocol says."""
    h, w = image.shape[-2:]
    total = 0
    for s in scales:
        for flipped in ([False, True] if flip else [False]):
            x = F.interpolate(image[None], size=(s, s), mode="bilinear", align_corners=False)
            if flipped:
                x = x.flip(-1)
            out = model(x)
            a = out["attn_sum"][:, 1:, 1:]
            m = torch.einsum("bij,bsj->bsi", a, out["cam"].flatten(2)).reshape(out["cam"].shape)
            m = F.interpolate(m[:, 1:], size=(h, w), mode="bilinear", align_corners=False)[0]
            total = total + (m.flip(-1) if flipped else m)
    cams = F.relu(total[[c - 1 for c in classes]])
    lo = cams.flatten(1).min(1).values[:, None, None]
    hi = cams.flatten(1).max(1).values[:, None, None]
    return (cams - lo) / (hi - lo + 1e-5)


@pytest.mark.parametrize("batch_passes", [True, False])
def test_multiscale_cam_matches_reference(batch_passes):
    model = FakeCamModel().eval()
    image = torch.randn(3, 20, 28)
    out = multiscale_cam(model, image, [1, 3], [16, 32], flip=True, batch_passes=batch_passes,
                         patch_multiple=8, resample="bilinear")
    assert out.shape == (2, 20, 28)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    torch.testing.assert_close(out, _reference(model, image, [1, 3], [16, 32], True))


def test_seeds_follow_the_normalised_cams_not_the_raw_scores():
    """The seed threshold applies after the per-class min-max normalisation (paper; TransCAM):
    a CAM 100 times smaller gives the same seeds."""

    class Smaller(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model(x)
            return {**out, "cam": out["cam"] / 100}

    model = FakeCamModel().eval()
    image = torch.randn(3, 20, 28)
    kw = {"flip": True, "patch_multiple": 8, "resample": "bilinear"}
    seeds = cams_to_seeds(multiscale_cam(model, image, [1, 3], [16, 32], **kw), [1, 3], 0.5)
    smaller = cams_to_seeds(multiscale_cam(Smaller(model), image, [1, 3], [16, 32], **kw),
                            [1, 3], 0.5)
    assert (seeds != 0).any() and (seeds == 0).any()
    np.testing.assert_array_equal(seeds, smaller)


def test_multiscale_cam_keep_aspect_and_no_classes():
    model = FakeCamModel().eval()
    image = torch.randn(3, 20, 40)
    out = multiscale_cam(model, image, [2], [32], flip=False, resize="keep_aspect",
                         patch_multiple=8, resample="bilinear")
    assert out.shape == (1, 20, 40)
    assert multiscale_cam(model, image, [], [32], patch_multiple=8,
                          resample="bilinear").shape == (0, 20, 40)


def test_cam_sources_match_einsum():
    g = torch.Generator().manual_seed(2)
    cam = torch.randn(2, 3, 2, 3, generator=g)
    attn = torch.rand(2, 7, 7, generator=g)
    a_star = attn[:, 1:, 1:]
    flat = cam.flatten(2)
    expected = {
        "transcam": torch.einsum("bij,bsj->bsi", a_star, flat).reshape(cam.shape),
        "attnagg": torch.einsum("bji,bsj->bsi", a_star, flat).reshape(cam.shape),
        "clsattn": (attn[:, 0, 1:, None] * flat.transpose(1, 2)).transpose(1, 2).reshape(
            cam.shape),
        "conv": cam,
    }
    for source, value in expected.items():
        torch.testing.assert_close(cam_from_outputs({"cam": cam, "attn_sum": attn}, source), value)
    with pytest.raises(ValueError, match="source must be one of"):
        cam_from_outputs({"cam": cam, "attn_sum": attn}, "gradcam")


def test_pil_bicubic_resizes_the_uint8_image_before_normalising() -> None:
    """TransCAM voc12/data.py: PIL bicubic (a = -0.5, taps renormalised at the border, rounded
    to uint8), then normalisation. Row [0, 255] to width 4, by hand: output 1 has centre 0.75,
    taps x = 0, 1 with weights k(0.25) = 0.8671875, k(0.25 + 0.5) = 0.2265625, so
    255 * 0.2265625 / 1.09375 = 52.8 -> 53; output 0 is negative -> 0; the rest mirror."""
    from bnr.cam.maps import scaled_input
    from bnr.data.transforms import normalize

    image = np.zeros((1, 2, 3), np.uint8)
    image[0, 1] = 255
    got = scaled_input(image, (1, 4), "pil_bicubic")  # (1, 3, 1, 4)
    want = normalize(torch.tensor([0, 53, 202, 255], dtype=torch.uint8).expand(3, 1, 4))
    assert got.shape == (1, 3, 1, 4)
    assert torch.allclose(got[0], want, atol=1.5 / 255 / 0.224)  # within one uint8 step
    # the earlier path: bilinear on the normalised image, samples 0, 63.75, 191.25, 255
    old = scaled_input(image, (1, 4), "bilinear")
    ramp = torch.tensor([0.0, 63.75, 191.25, 255.0]) / 255
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None], torch.tensor(IMAGENET_STD)[:, None]
    assert torch.allclose(old[0, :, 0], (ramp[None] - mean) / std, atol=1e-5)
    with pytest.raises(ValueError, match="needs the uint8 image"):
        scaled_input(normalize(torch.zeros(3, 2, 2, dtype=torch.uint8)), (4, 4), "pil_bicubic")


def test_multiscale_cam_pil_bicubic_matches_manual_passes() -> None:
    from bnr.cam.maps import scaled_input

    model = FakeCamModel().eval()
    image = np.random.default_rng(0).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    got = multiscale_cam(model, image, [1, 3], [16, 32], flip=False, patch_multiple=8,
                         resample="pil_bicubic")
    total = 0
    for s in (16, 32):
        m = cam_from_outputs(model(scaled_input(image, (s, s), "pil_bicubic")))
        total = total + F.interpolate(m[:, 1:], size=(20, 28), mode="bilinear",
                                      align_corners=False)[0]
    torch.testing.assert_close(got, normalize_cams(F.relu(total[[0, 2]])))


def test_normalisation_edge_cases_follow_the_paper() -> None:
    """All-zero present class -> 0 (TransCAM: -1e-5); a tie with the threshold is foreground
    (paper: "equal to or above"; TransCAM's 1e-5 shift makes it background)."""
    cams = normalize_cams(torch.stack([torch.zeros(2, 2), torch.tensor([[0.0, 1.0], [2.0, 4.0]])]))
    assert torch.equal(cams[0], torch.zeros(2, 2))
    assert torch.allclose(cams[1], torch.tensor([[0.0, 0.25], [0.5, 1.0]]), atol=1e-5)
    tie = np.array([[[0.25, 0.24]]], np.float32)
    assert cams_to_seeds(tie, [7], 0.25).tolist() == [[7, 0]]
