"""Eq. 3-4 (A), eq. 4 (A*) and eq. 7 (A-bar*) exist once, in bnr/models/attention.py, and the
model, the loss, the seed maps and the diagnostics use them: replacing one function changes what
each of them computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bnr.cam.attention_diagnostics as diagnostics
import bnr.cam.losses as losses
import bnr.cam.maps as maps
import bnr.models.conformer as conformer
from bnr.models.attention import aggregate_attention, mean_patch_attention, patch_attention

pytestmark = pytest.mark.numerics  # float kernels: CI runs it again under AVX2


def _blocks(count: int, b: int, heads: int, n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.softmax(torch.randn(b, heads, n + 1, n + 1, generator=g), -1)
            for _ in range(count)]


def test_equations_against_einsum() -> None:
    blocks = _blocks(4, 2, 3, 6)
    stacked = torch.stack(blocks)  # (L, B, H, 1+N, 1+N)
    a = torch.einsum("lbhij->bij", stacked) / 3  # heads averaged, blocks summed
    torch.testing.assert_close(aggregate_attention(blocks), a)
    torch.testing.assert_close(aggregate_attention(stacked), a)
    torch.testing.assert_close(aggregate_attention(iter(blocks)), a)  # a generator
    torch.testing.assert_close(patch_attention(a), a[:, 1:, 1:])
    torch.testing.assert_close(mean_patch_attention(a, 4), stacked.mean((0, 2))[:, 1:, 1:])
    with pytest.raises(ValueError):
        aggregate_attention([])


def _spy(monkeypatch: pytest.MonkeyPatch, module, name: str, calls: list) -> None:
    real = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)


def test_the_model_sums_attention_with_aggregate_attention(monkeypatch) -> None:
    model = conformer.create_conformer("conformer_tiny", 3).eval()
    x = torch.randn(1, 3, 32, 32)
    calls: list = []
    _spy(monkeypatch, conformer, "aggregate_attention", calls)
    with torch.no_grad():
        out = model(x)
    assert calls == ["aggregate_attention"]
    monkeypatch.setattr(conformer, "aggregate_attention",
                        lambda blocks: 2 * aggregate_attention(blocks))
    with torch.no_grad():
        doubled = model(x)
    torch.testing.assert_close(doubled["attn_sum"], 2 * out["attn_sum"])


def test_loss_maps_and_diagnostics_take_a_star_and_a_bar_star_from_one_place(monkeypatch) -> None:
    g = torch.Generator().manual_seed(1)
    cam = torch.randn(2, 3, 2, 3, generator=g)
    attn_sum = aggregate_attention(_blocks(4, 2, 2, 6))
    calls: list = []
    for module, name in ((losses, "patch_attention"), (losses, "mean_patch_attention"),
                         (maps, "patch_attention"), (diagnostics, "mean_patch_attention")):
        _spy(monkeypatch, module, name, calls)
    losses.noisy_refined_cam(cam, attn_sum, 4, 1.0)
    assert calls == ["patch_attention", "mean_patch_attention"]
    calls.clear()
    maps.cam_from_outputs({"cam": cam, "attn_sum": attn_sum}, "transcam")
    assert calls == ["patch_attention"]
    calls.clear()

    class Model(torch.nn.Module):
        num_blocks = 4
        cfg = type("Cfg", (), {"patch_size": 8})

        def forward(self, image):
            return {"attn_sum": attn_sum[:1, :5, :5]}

    item = {"image": torch.zeros(3, 16, 16), "mask": np.zeros((16, 16), np.uint8)}
    diagnostics.diagnose(Model(), [item], 1)
    assert calls == ["mean_patch_attention"]
