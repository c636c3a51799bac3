"""Affinity labels, pixel-pair sets and the AffinityNet loss (PSA, as configured by TransCAM).

Pixel pairs (PSA ``get_indices_of_pairs`` / ``ExtractAffinityLabelInRadius``): on an (h, w) map,
the "from" pixels are the crop ``rows [0, h - r + 1)``, ``cols [r - 1, w - r + 1)`` (r = radius)
and each is paired with the pixels at the half-plane offsets ``(0, dx)`` for ``dx in 1..r-1`` and
``(dy, dx)`` for ``dy in 1..r-1``, ``|dx| <= r-1``, ``dx^2 + dy^2 < r^2``; so every unordered pair
appears once (34 offsets for r = 5). Pairs are flattened offset-major: index ``d * n_from + k``
is offset d of from-pixel k, the layout of PSA's ``(D, n_from)`` affinity tensor.

Affinity labels (TransCAM ``infer_TransCAM.py`` + ``voc12/data.py``; PSA's ``infer_cls.py`` +
``voc12/data.py`` differ as noted in :func:`combine_affinity_labels`): CAM scores with a fixed
background score are arg-maxed and refined by a dense CRF twice: with a high background score
(``low_bg=0.60``, PSA's "la", low alpha: only confident foreground survives) and with a low one
(``high_bg=0.25``, PSA's "ha": only confident background stays background).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from bnr.errors import BnrError

IGNORE = 255

CrfLabelFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


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


def pair_labels(
    label_map: torch.Tensor | np.ndarray, src: torch.Tensor, dst: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pair targets ``(bg_pos, fg_pos, neg)``, bool (..., P), from a label map (..., h, w).

    ``bg_pos``: both ends background (0); ``fg_pos``: both ends the same foreground class;
    ``neg``: different classes. Pairs with an ignored end (255) are in none of the three.
    """
    if isinstance(label_map, np.ndarray):
        label_map = torch.from_numpy(np.ascontiguousarray(label_map))
    lab = label_map
    flat = lab.flatten(-2).long()  # (..., h * w)
    a = flat.index_select(-1, src.to(flat.device))  # (..., P)
    b = flat.index_select(-1, dst.to(flat.device))  # (..., P)
    valid = (a != IGNORE) & (b != IGNORE)
    same = (a == b) & valid
    return same & (a == 0), same & (a != 0), valid & (a != b)


def affinity_loss(
    aff: torch.Tensor,
    bg_pos: torch.Tensor,
    fg_pos: torch.Tensor,
    neg: torch.Tensor,
    eps: float = 1e-5,
    mean: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PSA's AffinityNet loss ``bg/4 + fg/4 + neg/2``; every input has the same shape (B, P).

    bg = mean over bg_pos pairs of ``-log(aff + eps)``, fg likewise over fg_pos, neg = mean over
    neg pairs of ``-log(1 + eps - aff)``; each mean divides by ``count + eps`` as PSA does, so an
    empty term is exactly 0. ``mean(total, count)`` replaces that division (data-parallel
    training divides by the count over all processes). Returns ``(loss, parts)``, parts =
    detached bg / fg / neg terms and the three pair counts.
    """
    bg_w, fg_w, neg_w = (m.to(aff.dtype) for m in (bg_pos, fg_pos, neg))
    bg_n, fg_n, neg_n = bg_w.sum(), fg_w.sum(), neg_w.sum()
    if mean is None:
        def mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
            return total / (count + eps)
    bg = mean((-bg_w * torch.log(aff + eps)).sum(), bg_n)
    fg = mean((-fg_w * torch.log(aff + eps)).sum(), fg_n)
    ng = mean((-neg_w * torch.log(1.0 + eps - aff)).sum(), neg_n)
    loss = bg / 4 + fg / 4 + ng / 2
    parts = {
        "bg": bg.detach(),
        "fg": fg.detach(),
        "neg": ng.detach(),
        "bg_count": bg_n.detach(),
        "fg_count": fg_n.detach(),
        "neg_count": neg_n.detach(),
    }
    return loss, parts


def _check_cams(image: np.ndarray, cams: np.ndarray, keys: Sequence[int], n_labels: int) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BnrError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if cams.ndim != 3 or cams.shape[1:] != image.shape[:2]:
        raise BnrError(f"cams must be (K, H, W) matching image {image.shape[:2]}, got {cams.shape}")
    if len(keys) != cams.shape[0]:
        raise BnrError(f"{len(keys)} class keys for {cams.shape[0]} CAMs")
    if len(set(keys)) != len(keys) or any(not 0 < int(k) < n_labels for k in keys):
        raise BnrError(f"class keys must be distinct foreground ids in 1..{n_labels - 1}: {keys}")


def cam_labels(cams: np.ndarray, keys: Sequence[int], bg_score: float) -> np.ndarray:
    """argmax over [bg_score, cams] mapped to class ids: cams (K, H, W) -> (H, W) uint8.

    Ties go to the lower row, so to background first (``np.argmax``, as TransCAM).
    """
    h, w = cams.shape[1:]
    scores = np.concatenate([np.full((1, h, w), bg_score, np.float32), cams.astype(np.float32)])
    ids = np.asarray([0, *keys], dtype=np.uint8)
    return ids[np.argmax(scores, axis=0)]  # (H, W)


def combine_affinity_labels(la: np.ndarray, ha: np.ndarray, rule: str = "transcam") -> np.ndarray:
    """Merge the two CRF label maps into one with 255 = ignore.

    ``la`` (high background score 0.60): its foreground pixels are confident foreground and keep
    their class; its background pixels are unsure -> 255, except:

    * ``rule="transcam"`` (TransCAM ``voc12/data.py``, the REFERENCE's "la+ha==0"): pixels that
      are background in both ``la`` and ``ha`` -> 0;
    * ``rule="psa"`` (PSA ``voc12/data.py``): every pixel that is background in ``ha`` -> 0,
      even where ``la`` says foreground.
    """
    if rule not in ("transcam", "psa"):
        raise ValueError(f"rule must be 'transcam' or 'psa', got {rule!r}")
    out = la.astype(np.uint8, copy=True)
    out[la == 0] = IGNORE
    if rule == "transcam":
        out[(la == 0) & (ha == 0)] = 0
    else:
        out[ha == 0] = 0
    return out


def affinity_labels_from_cam(
    image: np.ndarray,
    cams: np.ndarray,
    keys: Sequence[int],
    low_bg: float = 0.60,
    high_bg: float = 0.25,
    crf_fn: CrfLabelFn | None = None,
    n_labels: int = 21,
    stride: int = 8,
    rule: str = "transcam",
) -> np.ndarray:
    """Affinity training labels from CAMs: image (H, W, 3) uint8, cams (K, H, W) in [0, 1].

    ``keys`` are the K classes' ids (1-based foreground ids). la = crf_fn(image,
    argmax([low_bg, cams]), n_labels), ha likewise with ``high_bg``; both at full resolution,
    merged by :func:`combine_affinity_labels` and subsampled by nearest neighbour (pixel
    ``(stride*i, stride*j)``, what TransCAM's ``RescaleNearest(1/8)`` picks), giving
    (ceil(H/stride), ceil(W/stride)) uint8 with 0 = background, 255 = ignore. ``stride=1``
    returns the full-resolution map (crop / flip it before subsampling, as TransCAM's data
    loader does). ``crf_fn`` defaults to :func:`bnr.postprocessing.crf.dense_crf_labels`.
    """
    image = np.asarray(image)
    cams = np.asarray(cams)
    _check_cams(image, cams, keys, n_labels)
    if crf_fn is None:
        from bnr.postprocessing.crf import dense_crf_labels

        crf_fn = dense_crf_labels
    la = crf_fn(image, cam_labels(cams, keys, low_bg), n_labels)  # (H, W)
    ha = crf_fn(image, cam_labels(cams, keys, high_bg), n_labels)  # (H, W)
    label = combine_affinity_labels(np.asarray(la), np.asarray(ha), rule)  # (H, W)
    return np.ascontiguousarray(label[::stride, ::stride])  # (ceil(H/s), ceil(W/s))
