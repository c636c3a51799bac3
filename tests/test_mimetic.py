"""Mimetic attention initialisation (bnr.models.mimetic, Trockman and Kolter, ICML 2023): the
factor products per head, what it leaves alone, and that loaded weights replace it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnr.checkpoints import save_checkpoint
from bnr.errors import BnrError
from bnr.models.conformer import Attention
from bnr.models.mimetic import (
    ALPHA_QK,
    ALPHA_VO,
    BETA_QK,
    BETA_VO,
    factorise,
    mimetic_attention_,
    mimetic_target,
)
from bnr.models.registry import create_model, model_from_checkpoint

pytestmark = pytest.mark.numerics  # float kernels: CI runs it again under AVX2

D, HEADS = 96, 2  # conformer_tiny's transformer width and heads
EYE = torch.eye(D, dtype=torch.float64)


def _targets(seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The targets mimetic_attention_ draws from a generator seeded ``seed``, in its order."""
    g = torch.Generator().manual_seed(seed)
    qk = [mimetic_target(D, ALPHA_QK, BETA_QK, g) for _ in range(HEADS)]
    return qk, mimetic_target(D, ALPHA_VO, -BETA_VO, g)


def test_factors_multiply_to_the_target_or_its_best_low_rank_approximation() -> None:
    target = mimetic_target(D, 0.7, 0.7, torch.Generator().manual_seed(1))
    z = (target - 0.7 * EYE) / 0.7
    assert abs(float(z.var()) * D - 1) < 0.05  # Z: variance 1/D
    a, b = factorise(target, D)
    torch.testing.assert_close(a.T @ b, target, rtol=0, atol=1e-10)
    a, b = factorise(target, D // 2)
    u, s, vh = torch.linalg.svd(target)
    best = u[:, : D // 2] @ torch.diag(s[: D // 2]) @ vh[: D // 2]  # Eckart-Young
    torch.testing.assert_close(a.T @ b, best, rtol=0, atol=1e-10)


def test_per_head_products_are_alpha_z_plus_minus_beta_identity() -> None:
    attn = Attention(D, HEADS, qkv_bias=True)
    biases = attn.qkv.bias.detach().clone(), attn.proj.bias.detach().clone()
    mimetic_attention_(attn.qkv, attn.proj, HEADS, generator=torch.Generator().manual_seed(3))
    qk_targets, vo_target = _targets(3)
    w, d = attn.qkv.weight.detach().double(), D // HEADS
    for h, target in enumerate(qk_targets):
        wq, wk = w[h * d:(h + 1) * d], w[D + h * d:D + (h + 1) * d]
        product = wq.T @ wk  # the paper's W_q W_k^T of head h (D x D, rank d)
        u, s, vh = torch.linalg.svd(target)
        torch.testing.assert_close(product, u[:, :d] @ torch.diag(s[:d]) @ vh[:d],
                                   rtol=0, atol=1e-5)  # float32 weights
        # rank d = D/2 of alpha Z + beta I keeps most of it: measured 0.38 relative error,
        # diagonal mean 0.53 (beta 0.7), off-diagonal part 0.67 x alpha Z
        assert (product - target).norm() / target.norm() < 0.45
        assert float(product.diag().mean()) > 0.5 * BETA_QK
        z = (target - BETA_QK * EYE) / ALPHA_QK
        off = product - torch.diag(product.diag())
        assert float((off * z).sum() / (z * z).sum()) > 0.5 * ALPHA_QK
    # value/projection: the heads' shares add up to alpha2 Z2 - beta2 I exactly
    wv, wp = w[2 * D:], attn.proj.weight.detach().double()
    shares = [wv[h * d:(h + 1) * d].T @ wp[:, h * d:(h + 1) * d].T for h in range(HEADS)]
    torch.testing.assert_close(sum(shares), vo_target, rtol=0, atol=1e-5)
    assert float(sum(shares).diag().mean()) == pytest.approx(-BETA_VO, abs=0.05)
    assert torch.equal(attn.qkv.bias, biases[0]) and torch.equal(attn.proj.bias, biases[1])


def test_mimetic_changes_only_the_attention_weights() -> None:
    torch.manual_seed(0)
    official = create_model("cam", "conformer_tiny", num_classes=5)
    torch.manual_seed(0)
    mimetic = create_model("cam", "conformer_tiny", num_classes=5, init="mimetic")
    names = [n for n, m in mimetic.named_modules() if isinstance(m, Attention)]
    assert len(names) == 3  # trans_1 and the two coupled blocks
    changed = {f"{n}.{p}" for n in names for p in ("qkv.weight", "proj.weight")}
    before, after = official.state_dict(), mimetic.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]) != (key in changed), key
    x = torch.randn(1, 3, 64, 64)
    assert mimetic.eval()(x)["cam"].shape == official.eval()(x)["cam"].shape
    with pytest.raises(BnrError, match="unknown Conformer init 'xavier'"):
        create_model("cam", "conformer_tiny", num_classes=5, init="xavier")


def _file_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """An official-layout weights file of ``model`` (as ImageNet or the pretrain stage write),
    1000-class heads included."""
    state = {k: v.clone() for k, v in model.state_dict().items() if "cls_head" not in k}
    d, c3 = model.cfg.embed_dim, model.cfg.stage_channels[2]
    return state | {"trans_cls_head.weight": torch.randn(1000, d),
                    "trans_cls_head.bias": torch.zeros(1000),
                    "conv_cls_head.weight": torch.randn(1000, c3),
                    "conv_cls_head.bias": torch.zeros(1000)}


def test_loaded_weights_replace_the_mimetic_init(tmp_path) -> None:
    torch.manual_seed(7)
    source = create_model("cam", "conformer_tiny", num_classes=5)  # official init
    torch.save(_file_state(source), tmp_path / "imagenet.pth")
    torch.manual_seed(0)
    loaded = create_model("cam", "conformer_tiny", num_classes=5, init="mimetic",
                          pretrained=str(tmp_path / "imagenet.pth"))
    for key, value in loaded.state_dict().items():
        if "cls_head" not in key:  # the 1000-class heads are dropped on purpose
            assert torch.equal(value, source.state_dict()[key]), key
    # a trained bnr checkpoint: rebuilt and loaded exactly, whatever init it was trained from
    torch.manual_seed(1)
    trained = create_model("cam", "conformer_tiny", num_classes=5, init="mimetic")
    meta = {"kind": "cam", "preset": "conformer_tiny", "num_classes": 5}
    save_checkpoint(tmp_path / "cam.pt", {"model": trained.state_dict(), "meta": meta})
    again, _ = model_from_checkpoint(tmp_path / "cam.pt", {"kind": "cam"})
    for key, value in trained.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_shapes_that_are_not_an_attention_are_refused() -> None:
    with pytest.raises(ValueError, match="not a 5-head attention"):  # 96 % 5 != 0
        mimetic_attention_(nn.Linear(D, 3 * D), nn.Linear(D, D), 5)
    with pytest.raises(ValueError, match="not a 2-head attention"):
        mimetic_attention_(nn.Linear(D, 2 * D), nn.Linear(D, D), 2)
