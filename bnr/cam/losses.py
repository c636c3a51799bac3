"""Training losses of TransCAM (L_cls) and BNR (L_M**, paper eq. 6-9).

Background is channel 0 of every (B, S, ...) tensor and is excluded from the losses.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from bnr.cam.maps import refine_cam
from bnr.models.attention import mean_patch_attention, patch_attention


def classification_loss(cnn_logits: Tensor, token_logits: Tensor, labels: Tensor) -> Tensor:
    """L_cls: multi-label soft margin on the SUM of CNN and class-token logits (B, S).

    As the public TransCAM code: one loss on the summed logits, foreground channels only.
    """
    return F.multilabel_soft_margin_loss((cnn_logits + token_logits)[:, 1:], labels[:, 1:])


def noisy_refined_cam(
    cam: Tensor, attn_sum: Tensor, num_blocks: int, noise_scale: float | None
) -> Tensor:
    """M** = (noise_scale . A-bar*) . M*, with M* = A* . M (eq. 5-6): (B, S, h, w).

    ``attn_sum`` (B, 1+N, 1+N) is the block SUM of head-mean attention, so A* = its patch part
    (gradients flow) and A-bar* = A* / num_blocks, detached (no gradient, eq. 7).
    ``noise_scale=None`` is "without noise" (paper Table 5): M** = M*. The formula is continuous
    in a number: 0 gives M** = 0 (no gradient), not M*.
    """
    refined = refine_cam(cam, patch_attention(attn_sum))  # M* = A* . M (eq. 5)
    if noise_scale is None:
        return refined
    noise = mean_patch_attention(attn_sum, num_blocks).detach() * noise_scale  # eq. 6-7
    return refine_cam(refined, noise)


def bnr_loss(
    cam: Tensor, attn_sum: Tensor, labels: Tensor, num_blocks: int, noise_scale: float | None
) -> Tensor:
    """L_M**: multi-label soft margin on z = GAP(M**) (eq. 8), foreground channels."""
    z = noisy_refined_cam(cam, attn_sum, num_blocks, noise_scale).mean(dim=(2, 3))  # (B, S)
    return F.multilabel_soft_margin_loss(z[:, 1:], labels[:, 1:])


def total_loss(
    outputs: dict, labels: Tensor, method: str, noise_scale: float | None, num_blocks: int
) -> tuple[Tensor, dict[str, float]]:
    """L = L_cls + L_M** for ``bnr`` (eq. 9), L_cls alone for ``transcam``.

    Returns the loss and its detached terms (for logging).
    """
    cls = classification_loss(outputs["cnn_logits"], outputs["token_logits"], labels)
    parts = {"loss_cls": float(cls.detach())}
    loss = cls
    if method == "bnr":
        extra = bnr_loss(outputs["cam"], outputs["attn_sum"], labels, num_blocks, noise_scale)
        parts["loss_bnr"] = float(extra.detach())
        loss = cls + extra
    elif method != "transcam":
        raise ValueError(f"method must be 'bnr' or 'transcam', got {method!r}")
    parts["loss"] = float(loss.detach())
    return loss, parts
