import pytest
import torch
import torch.nn.functional as F

from bnr.cam.losses import bnr_loss, classification_loss, noisy_refined_cam, total_loss

pytestmark = pytest.mark.numerics  # float kernels: CI runs it again under AVX2


def _soft_margin(z, y):
    """Eq. 8 written out: -mean_s [y log sigmoid(z) + (1 - y) log sigmoid(-z)]."""
    return -(y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)).mean(-1).mean()


def _inputs(seed=0, b=2, s=4, h=3, w=3, blocks=5):
    cam, attn_sum, labels, blocks, _ = _inputs_and_heads(seed, b, s, h, w, blocks)
    return cam, attn_sum, labels, blocks


def _inputs_and_heads(seed=0, b=2, s=4, h=3, w=3, blocks=5):
    """Also the per-block, per-head attention (L, B, H, 1+N, 1+N) the model's sum comes from."""
    g = torch.Generator().manual_seed(seed)
    n = h * w
    heads = torch.softmax(torch.randn(blocks, b, 2, n + 1, n + 1, generator=g), -1)
    attn_sum = heads.mean(2).sum(0)  # (B, 1+N, 1+N)
    cam = torch.randn(b, s, h, w, generator=g)
    labels = torch.tensor([[1, 1, 0, 1], [1, 0, 1, 0]], dtype=torch.float32)
    return cam, attn_sum, labels, blocks, heads


def _m_double_star(cam, heads, noise_scale):
    """Eq. 5-7 from the per-block maps, one patch at a time (no shortcut the code takes):
    A*[i, j] = sum over blocks of the head mean, A-bar*[i, j] = its mean over blocks,
    M*_s[i] = sum_j A*[i, j] M_s[j], M**_s[i] = sum_j noise_scale A-bar*[i, j] M*_s[j]."""
    b, s = cam.shape[:2]
    m = cam.flatten(2)  # (B, S, N)
    n = m.shape[-1]
    out = torch.zeros(b, s, n)
    for k in range(b):
        a_star = sum(heads[layer, k].mean(0) for layer in range(heads.shape[0]))[1:, 1:]
        a_bar = heads[:, k].mean((0, 1))[1:, 1:]  # mean over blocks and heads
        m_star = torch.stack([(a_star[i] * m[k]).sum(-1) for i in range(n)], -1)  # (S, N)
        out[k] = torch.stack([(noise_scale * a_bar[i] * m_star).sum(-1) for i in range(n)], -1)
    return out  # (B, S, N)


def test_classification_loss_is_one_loss_on_summed_logits():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    y = torch.tensor([[1.0, 1, 0, 1], [1, 0, 1, 0]])
    expected = _soft_margin((a + b)[:, 1:], y[:, 1:])
    torch.testing.assert_close(classification_loss(a, b, y), expected)


@pytest.mark.parametrize("noise_scale", [1.0, 2.0])
def test_bnr_loss_matches_the_equations_written_out(noise_scale):
    cam, attn_sum, labels, blocks, heads = _inputs_and_heads()
    z = _m_double_star(cam, heads, noise_scale).mean(-1)  # GAP (eq. 8)
    expected = _soft_margin(z[:, 1:], labels[:, 1:])
    torch.testing.assert_close(bnr_loss(cam, attn_sum, labels, blocks, noise_scale), expected)
    assert float(expected) > 0  # a loss: a sign flip would fail the comparison


def test_without_noise_is_m_star_and_the_scale_has_no_jump_at_zero():
    cam, attn_sum, labels, blocks = _inputs()
    m_star = torch.einsum("bij,bsj->bsi", attn_sum[:, 1:, 1:], cam.flatten(2)).reshape(cam.shape)
    torch.testing.assert_close(noisy_refined_cam(cam, attn_sum, blocks, None), m_star)
    # a number is the formula all the way down: 0 and 1e-6 agree (both ~0), neither is M*
    near = noisy_refined_cam(cam, attn_sum, blocks, 1e-6)
    torch.testing.assert_close(noisy_refined_cam(cam, attn_sum, blocks, 0.0), near, atol=1e-5,
                               rtol=0)
    assert (near - m_star).abs().max() > 0.1


def test_gradients_reach_a_star_but_not_a_bar_star():
    cam, attn_sum, labels, blocks = _inputs()
    cam.requires_grad_(True)
    attn_sum.requires_grad_(True)
    # gradient through the noise path only: differentiate M** w.r.t. attention with M* fixed
    loss = bnr_loss(cam, attn_sum, labels, blocks, 1.0)
    (g_attn,) = torch.autograd.grad(loss, attn_sum, retain_graph=True)
    assert g_attn[:, 1:, 1:].abs().sum() > 0  # A* receives gradient (inside M*)
    assert g_attn[:, 0].abs().sum() == 0 and g_attn[:, :, 0].abs().sum() == 0  # class token
    # the same loss with A-bar* replaced by a constant copy has the identical gradient:
    # so nothing flows through A-bar*
    a_star = attn_sum[:, 1:, 1:]
    m_star = torch.einsum("bij,bsj->bsi", a_star, cam.flatten(2))
    const = (a_star / blocks).detach().clone()
    z = torch.einsum("bij,bsj->bsi", const, m_star).mean(-1)
    ref = _soft_margin(z[:, 1:], labels[:, 1:])
    (g_ref,) = torch.autograd.grad(ref, attn_sum, retain_graph=True)
    torch.testing.assert_close(g_attn, g_ref)
    # and if A-bar* were not detached, the gradient would differ
    z_bad = torch.einsum("bij,bsj->bsi", a_star / blocks, m_star).mean(-1)
    (g_bad,) = torch.autograd.grad(_soft_margin(z_bad[:, 1:], labels[:, 1:]), attn_sum)
    assert not torch.allclose(g_bad, g_ref)


def test_total_loss_methods():
    cam, attn_sum, labels, blocks = _inputs()
    outputs = {"cam": cam, "attn_sum": attn_sum, "cnn_logits": cam.mean((2, 3)),
               "token_logits": torch.zeros(2, 4)}
    loss_t, parts_t = total_loss(outputs, labels, "transcam", 1.0, blocks)
    assert set(parts_t) == {"loss_cls", "loss"}
    torch.testing.assert_close(loss_t, classification_loss(outputs["cnn_logits"],
                                                           outputs["token_logits"], labels))
    loss_b, parts_b = total_loss(outputs, labels, "bnr", 2.0, blocks)
    expected = loss_t + bnr_loss(cam, attn_sum, labels, blocks, 2.0)
    torch.testing.assert_close(loss_b, expected)
    assert parts_b["loss"] == pytest.approx(parts_b["loss_cls"] + parts_b["loss_bnr"], rel=1e-6)
    with pytest.raises(ValueError):
        total_loss(outputs, labels, "other", 1.0, blocks)
