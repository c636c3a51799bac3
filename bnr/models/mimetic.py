"""Mimetic initialisation of self-attention (A. Trockman and J. Z. Kolter, "Mimetic
Initialization of Self-Attention Layers", ICML 2023).

The paper observes that in ImageNet-trained ViTs, per head, the query-key product ``W_q W_kᵀ``
has a positive diagonal (a token attends to tokens like itself) and the value-projection product
``W_v W_proj`` a negative one, each on top of a noise-like part. It initialises a fresh network
so that, in its row-vector notation (``q = x W_q``, ``W_q`` of shape ``(D, d)``)::

    W_q W_kᵀ   ≈ α₁ Z₁ + β₁ I        W_v W_proj ≈ α₂ Z₂ − β₂ I

with ``Z`` random Gaussian matrices of variance ``1/D``, and obtains the factors from an SVD of
the target: ``A = U S Vᵀ`` gives ``W_q = U √S`` and ``W_k = V √S``. It needs no data.

Our derivation for timm-style ``Attention`` (``qkv``: ``Linear(D, 3D)``, rows ``[q; k; v]``,
each grouped by head; ``proj``: ``Linear(D, D)``), where a ``Linear`` holds the transposed
matrix (``x W_q = x Wq_torchᵀ``):

* Query/key, per head ``h`` with head size ``d``: the logits are ``x_i Wq_hᵀ Wk_h x_jᵀ``, a
  product of rank at most ``d``. Each head gets its own ``Z₁``; we keep the ``d`` leading
  singular triplets of its target (the closest rank-``d`` matrix, Eckart-Young):
  ``Wq_h = √S_d U_dᵀ`` and ``Wk_h = √S_d V_dᵀ``, so ``Wq_hᵀ Wk_h = U_d S_d V_dᵀ``.
* Value/projection: the heads' outputs are concatenated before ``proj``, so with every
  attention matrix the identity the block's map is ``x Wvᵀ Wpᵀ`` (``Wv`` the ``D`` value rows,
  ``Wp = proj.weight``): a full-rank ``D x D`` product, which we set exactly to the target
  (``Wv = √S Uᵀ``, ``Wp = V √S``); head ``h``'s share ``Wv_hᵀ Wp[:, h]ᵀ`` is the sum of its
  ``d`` columns of that decomposition, and the shares add up to ``α₂ Z₂ − β₂ I``.

Biases are left as they are (zero after the official initialisation). Nothing else changes: the
layers, the forward pass and the loss are the official ones, and loaded weights replace these.
"""

from __future__ import annotations

import torch
from torch import nn

# The paper's values for ViTs (its Section 4): alpha1 = beta1 = 0.7, alpha2 = beta2 = 0.4.
ALPHA_QK, BETA_QK, ALPHA_VO, BETA_VO = 0.7, 0.7, 0.4, 0.4


def mimetic_target(dim: int, alpha: float, beta: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``alpha * Z + beta * I`` (float64), ``Z`` with i.i.d. N(0, 1/dim) entries."""
    z = torch.randn(dim, dim, generator=generator, dtype=torch.float64) / dim**0.5
    return alpha * z + beta * torch.eye(dim, dtype=torch.float64)


def factorise(target: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` of shape ``(rank, D)`` with ``Aᵀ B`` the closest rank-``rank`` matrix to
    ``target`` (``target`` itself when ``rank == D``): ``A = √S Uᵀ``, ``B = √S Vᵀ``."""
    u, s, vh = torch.linalg.svd(target)
    root = s[:rank].sqrt()[:, None]
    return root * u[:, :rank].T, root * vh[:rank]


@torch.no_grad()
def mimetic_attention_(qkv: nn.Linear, proj: nn.Linear, num_heads: int,
                       alpha_qk: float = ALPHA_QK, beta_qk: float = BETA_QK,
                       alpha_vo: float = ALPHA_VO, beta_vo: float = BETA_VO,
                       generator: torch.Generator | None = None) -> None:
    """Overwrite the q, k, v rows of ``qkv.weight`` and ``proj.weight`` in place (module
    docstring). ``generator``: the random source of the ``Z`` matrices (default: torch's)."""
    dim = proj.weight.shape[0]
    if qkv.weight.shape != (3 * dim, dim) or proj.weight.shape != (dim, dim) or dim % num_heads:
        raise ValueError(f"mimetic init: qkv {tuple(qkv.weight.shape)} and proj "
                         f"{tuple(proj.weight.shape)} are not a {num_heads}-head attention")
    d = dim // num_heads
    w = qkv.weight
    for h in range(num_heads):
        wq, wk = factorise(mimetic_target(dim, alpha_qk, beta_qk, generator), d)
        w[h * d:(h + 1) * d] = wq.to(w.dtype)
        w[dim + h * d:dim + (h + 1) * d] = wk.to(w.dtype)
    wv, wp_t = factorise(mimetic_target(dim, alpha_vo, -beta_vo, generator), dim)
    w[2 * dim:] = wv.to(w.dtype)
    proj.weight.copy_(wp_t.T.to(proj.weight.dtype))
