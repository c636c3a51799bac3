"""The attention maps of TransCAM and BNR, each computed once, here (paper eq. 3-4 and 7).

``N = h * w`` patch tokens plus one class token (index 0) per image. The Conformer calls
:func:`aggregate_attention` while it runs its blocks; the CAM refinement (eq. 5), the BNR loss
(eq. 6-8), the seed maps and the attention diagnostics take A* and A-bar* from
:func:`patch_attention` and :func:`mean_patch_attention`.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor


def aggregate_attention(blocks: Iterable[Tensor]) -> Tensor:
    """A (eq. 3-4): each block's softmax attention averaged over its heads, summed over blocks.

    ``blocks``: the blocks' (B, H, 1+N, 1+N) weights, in order (a list, a stacked
    (L, B, H, 1+N, 1+N) tensor, or a generator that runs the blocks one by one). Returns
    (B, 1+N, 1+N), class token first. The sum is folded block by block and each block's map is
    dropped before the next one is drawn, so a generator keeps one per-head map alive at a time.
    """
    total = None
    for block in blocks:
        head_mean = block.mean(dim=1)  # (B, H, 1+N, 1+N) -> (B, 1+N, 1+N)
        total = head_mean if total is None else total + head_mean
        del block, head_mean
    if total is None:
        raise ValueError("no attention blocks given")
    return total


def patch_attention(attn_sum: Tensor) -> Tensor:
    """A* (eq. 4): the patch-to-patch part of A, (B, 1+N, 1+N) -> (B, N, N).

    The class-token row and column are dropped without renormalising the rows (TransCAM).
    """
    return attn_sum[:, 1:, 1:]


def mean_patch_attention(attn_sum: Tensor, num_blocks: int) -> Tensor:
    """A-bar* (eq. 7): A* averaged over the ``num_blocks`` blocks, (B, 1+N, 1+N) -> (B, N, N).

    It keeps the graph; the BNR loss detaches it (eq. 7: no gradient through the noise).
    """
    return patch_attention(attn_sum) / num_blocks
