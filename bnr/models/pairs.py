"""PSA's pixel-pair geometry on a feature map, and the affinities of those pairs.

On an (h, w) map the "from" pixels are the crop ``rows [0, h - r + 1)``, ``cols [r - 1, w - r + 1)``
(r = radius), each paired with the pixels at the half-plane offsets ``(0, dx)`` for
``dx in 1..r-1`` and ``(dy, dx)`` for ``dy in 1..r-1``, ``|dx| <= r-1``, ``dx^2 + dy^2 < r^2``; so
every unordered pair appears once (34 offsets for r = 5). Pairs are flattened offset-major: index
``d * n_from + k`` is offset d of from-pixel k, the layout of PSA's ``(D, n_from)`` affinity tensor.

Tensor-level only (no data, no labels): the AffinityNet model (:mod:`bnr.models.resnet38`) and
post-processing (:mod:`bnr.affinity.affinity_labels`) both use it.
"""

from __future__ import annotations

import torch

from bnr.errors import BnrError


def pair_offsets(radius: int = 5) -> list[tuple[int, int]]:
    """PSA's half-plane neighbour offsets ``(dy, dx)`` within ``radius`` (34 for radius 5)."""
    if radius < 2:
        raise ValueError(f"radius must be >= 2, got {radius}")
    offsets = [(0, dx) for dx in range(1, radius)]
    offsets += [
        (dy, dx)
        for dy in range(1, radius)
        for dx in range(-radius + 1, radius)
        if dx * dx + dy * dy < radius * radius
    ]
    return offsets


def pair_indices(
    h: int, w: int, radius: int = 5, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat node indices ``(src, dst)``, each (P,) int64, of PSA's radius pairs on an (h, w) map.

    ``P = len(pair_offsets(radius)) * (h - radius + 1) * (w - 2 * radius + 2)``; ``src`` is the
    from-pixel (``y * w + x``), ``dst`` its neighbour. Raises BnrError if the map is too small
    (needs ``h >= radius`` and ``w >= 2 * radius - 1``).
    """
    r1 = radius - 1
    ch, cw = h - r1, w - 2 * r1
    if ch < 1 or cw < 1:
        raise BnrError(
            f"feature map {h}x{w} is too small for affinity radius {radius} "
            f"(needs height >= {radius} and width >= {2 * radius - 1})"
        )
    full = torch.arange(h * w, dtype=torch.int64, device=device).view(h, w)
    src = full[:ch, r1 : r1 + cw].reshape(-1)  # (n_from,)
    dst = torch.cat(
        [full[dy : dy + ch, r1 + dx : r1 + dx + cw].reshape(-1) for dy, dx in pair_offsets(radius)]
    )  # (D * n_from,)
    return src.repeat(len(pair_offsets(radius))), dst  # (P,), (P,)


def pair_affinity(features: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """PSA's affinity ``exp(-mean_c |f_src - f_dst|)``: features (B, C, h, w) -> (B, P)."""
    f = features.flatten(2)  # (B, C, h * w)
    diff = (f.index_select(2, src) - f.index_select(2, dst)).abs()  # (B, C, P)
    return torch.exp(-diff.mean(dim=1))  # (B, P)


def shrunk_radius(h: int, w: int, radius: int) -> int:
    """TransCAM's ``network/resnet38_aff.py``: on a map whose short side m is under
    ``2 * radius + 1`` the radius becomes ``(m - 1) // 2`` (e.g. 4 for a 9 x 40 map); below 2
    there are no pairs (TransCAM's pair function fails there; here the walk is the identity)."""
    m = min(h, w)
    return (m - 1) // 2 if m < 2 * radius + 1 else radius


def feature_affinity(
    features: torch.Tensor, radius: int, shrink: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PSA's radius pairs of a feature map (B, C, h, w) and their affinities:
    ``(aff (B, P), src (P,), dst (P,))``; ``shrink``: the radius shrinks on small maps
    (:func:`shrunk_radius`; the random walk; training crops are checked to fit instead).
    Computed in float32 whatever the features' precision: the random walk raises affinities
    to the power beta (14), which would magnify bfloat16 rounding."""
    feats = features.float()
    r = shrunk_radius(feats.shape[2], feats.shape[3], radius) if shrink else radius
    if r < 2:
        none = torch.zeros(0, dtype=torch.int64, device=feats.device)
        return feats.new_zeros((feats.shape[0], 0)), none, none.clone()
    src, dst = pair_indices(feats.shape[2], feats.shape[3], r, device=feats.device)
    return pair_affinity(feats, src, dst), src, dst
