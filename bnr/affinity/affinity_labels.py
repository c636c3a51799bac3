"""Affinity labels, pixel-pair sets and the AffinityNet loss (PSA, as configured by TransCAM).

Pixel pairs (PSA ``get_indices_of_pairs`` / ``ExtractAffinityLabelInRadius``) and their
affinities are in :mod:`bnr.models.pairs`; here their labels and the loss.

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


def combine_affinity_labels(la: np.ndarray, ha: np.ndarray) -> np.ndarray:
    """Merge the two CRF label maps into one with 255 = ignore (TransCAM ``voc12/data.py``).

    ``la`` (high background score 0.60): its foreground pixels are confident foreground and keep
    their class; its background pixels are unsure -> 255, except those that are background in
    ``ha`` too -> 0 (the REFERENCE's "la+ha==0"; PSA instead sets every background pixel of
    ``ha`` to 0, even where ``la`` says foreground).
    """
    out = la.astype(np.uint8, copy=True)
    out[la == 0] = IGNORE
    out[(la == 0) & (ha == 0)] = 0
    return out


def affinity_labels_from_cam(
    image: np.ndarray,
    cams: np.ndarray,
    keys: Sequence[int],
    low_bg: float = 0.60,
    high_bg: float = 0.25,
    *,
    n_labels: int,
    crf_fn: CrfLabelFn | None = None,
    stride: int = 8,
) -> np.ndarray:
    """Affinity training labels from CAMs: image (H, W, 3) uint8, cams (K, H, W) in [0, 1].

    ``keys`` are the K classes' ids (1-based foreground ids), ``n_labels`` the class count with
    background (21 on VOC). la = crf_fn(image,
    argmax([low_bg, cams]), n_labels), ha likewise with ``high_bg``; both at full resolution,
    merged by :func:`combine_affinity_labels` and subsampled by nearest neighbour (pixel
    ``(stride*i, stride*j)``, what TransCAM's ``RescaleNearest(1/8)`` picks), giving
    (ceil(H/stride), ceil(W/stride)) uint8 with 0 = background, 255 = ignore. ``stride=1``
    returns the full-resolution map (crop / flip it before subsampling, as TransCAM's data
    loader does). ``crf_fn`` defaults to :func:`bnr.pseudo_labels.crf.dense_crf_labels`.
    """
    image = np.asarray(image)
    cams = np.asarray(cams)
    _check_cams(image, cams, keys, n_labels)
    if crf_fn is None:
        from bnr.pseudo_labels.crf import dense_crf_labels

        crf_fn = dense_crf_labels
    la = crf_fn(image, cam_labels(cams, keys, low_bg), n_labels)  # (H, W)
    ha = crf_fn(image, cam_labels(cams, keys, high_bg), n_labels)  # (H, W)
    label = combine_affinity_labels(np.asarray(la), np.asarray(ha))  # (H, W)
    return np.ascontiguousarray(label[::stride, ::stride])  # (ceil(H/s), ceil(W/s))
