"""Random-walk propagation of CAMs with AffinityNet affinities (PSA ``infer_aff.py``, TransCAM).

PSA's procedure on one image, with its AffinityNet output at 1/8 resolution (h x w nodes, N = h*w):

1. score maps at full resolution: background row first, then the present classes' CAMs; the
   background is a fixed score (TransCAM: 0.42) or PSA's ``(1 - max_c cam_c) ** 16``;
2. zero-pad bottom/right to a multiple of 8 and average-pool by 8 -> (C, h, w);
3. A = aff ** beta on the radius pairs, mirrored (symmetric) plus self-loops of 1;
   T = A D^-1 (each column divided by its sum); the walk is ``v @ T ** (2 ** logt)``;
4. bilinear upsampling to the padded image size, crop, arg-max (then TransCAM's dense CRF).

:func:`random_walk_dense` is PSA's formulation: the dense N x N matrix squared ``logt`` times
(O(N^3) per squaring). :func:`random_walk_sparse` gives the same result with ``2 ** logt`` sparse
steps ``v <- v T`` (O(P * C) each) and never forms an N x N array: the pair weights are two CSR
tensors (one per direction) with int32 indices; the self-loops and D^-1 are applied in the loop.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bnr.errors import BnrError


def cams_with_background(cams: np.ndarray | torch.Tensor, bg_score: float) -> torch.Tensor:
    """Prepend the constant background score (TransCAM: 0.42) as row 0: cams (K, H, W) ->
    scores (1 + K, H, W) float32."""
    c = torch.as_tensor(np.asarray(cams) if isinstance(cams, np.ndarray) else cams)
    c = c.to(torch.float32)
    if c.ndim != 3:
        raise BnrError(f"cams must be (K, H, W), got {tuple(c.shape)}")
    bg = torch.full((1, *c.shape[1:]), float(bg_score))  # (1, H, W)
    return torch.cat([bg, c], dim=0)  # (1 + K, H, W)


def walk_background_score(background: str, fixed: float, seed_threshold: float) -> float:
    """The random walk's background score: ``fixed`` (``random_walk.bg_score``, TransCAM's) or,
    for ``datasets.<d>.random_walk.background: seed_threshold``, eval_seeds' best threshold."""
    return seed_threshold if background == "seed_threshold" else fixed


def downsample_scores(scores: torch.Tensor, stride: int = 8) -> torch.Tensor:
    """Zero-pad to a multiple of ``stride`` and average-pool: (C, H, W) -> (C, ceil(H/s),
    ceil(W/s)), as PSA pads the image and the CAMs before ``avg_pool2d(8, 8)``."""
    _, h, w = scores.shape
    ph, pw = -h % stride, -w % stride
    padded = F.pad(scores, (0, pw, 0, ph))  # (C, H + ph, W + pw)
    return F.avg_pool2d(padded[None], stride, stride)[0]  # (C, h, w)


def _check(cams_down: torch.Tensor, aff: torch.Tensor, src: torch.Tensor, dst: torch.Tensor):
    if cams_down.ndim != 3:
        raise BnrError(f"cams_down must be (C, h, w), got {tuple(cams_down.shape)}")
    aff = aff.reshape(-1)
    if aff.shape[0] != src.shape[0] or src.shape != dst.shape:
        raise BnrError(
            f"{aff.shape[0]} affinities for {src.shape[0]} / {dst.shape[0]} pair indices"
        )
    n = cams_down.shape[1] * cams_down.shape[2]
    if src.numel() and int(torch.maximum(src.max(), dst.max())) >= n:
        raise BnrError(f"pair indices exceed the {cams_down.shape[1]}x{cams_down.shape[2]} grid")
    if src.numel() and int(torch.minimum(src.min(), dst.min())) < 0:
        raise BnrError("negative pair indices")
    return aff


def transition_dense(
    aff: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, n: int, beta: float
) -> torch.Tensor:
    """PSA's transition matrix: aff (P,) on pairs -> T (N, N), columns summing to one."""
    a = torch.zeros((n, n), dtype=aff.dtype, device=aff.device)  # (N, N)
    w = aff.pow(beta)
    a[src, dst] = w
    a[dst, src] = w
    a.diagonal().fill_(1.0)  # self-loops: aff 1, 1 ** beta = 1
    return a / a.sum(dim=0, keepdim=True)  # (N, N)


def random_walk_dense(
    cams_down: torch.Tensor,
    aff: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    beta: float = 14,
    logt: int = 7,
) -> torch.Tensor:
    """Reference (PSA): T squared ``logt`` times; cams_down (C, h, w) -> (C, h, w)."""
    aff = _check(cams_down, aff, src, dst).to(cams_down.dtype)
    c, h, w = cams_down.shape
    t = transition_dense(aff, src, dst, h * w, beta)  # (N, N)
    for _ in range(logt):
        t = t @ t  # (N, N)
    return (cams_down.reshape(c, h * w) @ t).reshape(c, h, w)  # (C, h, w)


_INT32_MAX = torch.iinfo(torch.int32).max


def _index_dtypes(n: int, p: int) -> tuple[torch.dtype, torch.dtype]:
    """(sort key, CSR index) dtypes for P entries on N nodes: int32 whenever the values fit."""
    kdt = torch.int32 if n * (n + 1) <= _INT32_MAX else torch.int64  # keys row * N + col
    idt = torch.int32 if max(n, p) <= _INT32_MAX else torch.int64
    return kdt, idt


def _csr_by_rows(
    rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n: int
) -> torch.Tensor:
    """Sparse CSR (N, N) holding ``vals[k]`` at ``(rows[k], cols[k])``; int32 indices if they fit.

    The (row, col) pairs must be distinct (PSA's pairs are). One sort of the keys
    ``row * N + col``, in int32 while N (N + 1) fits, orders the entries: no int64 copies of the
    indices, no COO tensor and no COO -> CSR conversion (each of which copies the indices).
    """
    p, dev = rows.numel(), rows.device
    kdt, idt = _index_dtypes(n, p)
    out = torch.empty(p, dtype=kdt, device=dev)  # (P,) sorted keys, then the column indices
    key = torch.empty(p, dtype=kdt, device=dev).copy_(rows).mul_(n)  # (P,) row * N
    key.add_(out.copy_(cols))  # (P,) + col; an int64 operand would make an int64 temporary
    order = torch.empty(p, dtype=torch.int64, device=dev)  # (P,)
    torch.sort(key, out=(out, order))
    del key
    sorted_vals = torch.index_select(vals, 0, order)  # (P,)
    del order
    bounds = torch.arange(0, (n + 1) * n, n, dtype=kdt, device=dev)  # (N + 1,) first key per row
    crow = torch.searchsorted(out, bounds, out_int32=idt == torch.int32)  # (N + 1,) row starts
    col = out.remainder_(n).to(idt)  # (P,); no copy when kdt == idt
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, sorted_vals, (n, n))


def affinity_parts(
    aff: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, n: int, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PSA's symmetric A = I + U + U^T in parts: ``(U, U^T, d)``.

    U (N, N) holds ``aff ** beta`` at (src, dst) and U^T at (dst, src), both sparse CSR with int32
    indices; d (N,) are A's row (= column) sums, so that T^T = D^-1 A. Each direction is sorted on
    its own (P keys at a time, not 2P + N) and the self-loops are never stored.
    """
    w = aff.pow(beta)  # (P,)
    deg = torch.ones(n, dtype=w.dtype, device=w.device)  # (N,) self-loops: aff 1, 1 ** beta = 1
    deg.index_add_(0, src, w).index_add_(0, dst, w)  # (N,)
    upper = _csr_by_rows(src, dst, w, n)  # (N, N)
    lower = _csr_by_rows(dst, src, w, n)  # (N, N)
    return upper, lower, deg


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def random_walk_sparse(
    cams_down: torch.Tensor,
    aff: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    beta: float = 14,
    logt: int = 7,
    num_threads: int | None = 1,
) -> torch.Tensor:
    """``2 ** logt`` sparse steps ``v <- v T``; cams_down (C, h, w) -> (C, h, w).

    Equal to :func:`random_walk_dense` up to rounding; memory O(P + N * C) instead of O(N^2):
    the two CSR halves of A (int32 indices) and two (N, C) score buffers used in turn.
    ``num_threads``: CPU threads for the loop (restored afterwards; None keeps torch's setting).
    Each product is small and memory-bound, so one thread avoids an OpenMP barrier per step,
    which costs milliseconds when the cores are shared (see bench/random_walk.py).
    """
    aff = _check(cams_down, aff, src, dst).to(cams_down.dtype)
    c, h, w = cams_down.shape
    upper, lower, deg = affinity_parts(aff, src, dst, h * w, beta)  # (N, N), (N, N), (N,)
    dinv = deg.reciprocal_()[:, None]  # (N, 1)
    x = cams_down.reshape(c, h * w).T.contiguous()  # (N, C): (v T)^T = T^T v^T
    y = torch.empty_like(x)  # (N, C): a product cannot overwrite its own input
    with _torch_threads(num_threads if x.device.type == "cpu" else None):
        for _ in range(2**logt):
            torch.addmm(x, upper, x, out=y)  # (N, C): x + U x
            y.addmm_(lower, x)  # (N, C): + U^T x = A x
            y.mul_(dinv)  # (N, C): D^-1 A x = T^T x
            x, y = y, x
    del y
    return x.T.reshape(c, h, w)  # (C, h, w)


def upsample_argmax(
    scores_down: torch.Tensor, size: tuple[int, int], stride: int = 8
) -> torch.Tensor:
    """Bilinear upsampling to the padded size (h*stride, w*stride), crop to ``size`` (H, W) and
    arg-max over classes: (C, h, w) -> (H, W) int64 row indices."""
    c, h, w = scores_down.shape
    up = F.interpolate(
        scores_down[None], size=(h * stride, w * stride), mode="bilinear", align_corners=False
    )[0]  # (C, h * stride, w * stride)
    return up[:, : size[0], : size[1]].argmax(dim=0)  # (H, W)


def random_walk_segmentation(
    cams: np.ndarray | torch.Tensor,
    keys: Sequence[int],
    aff: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    beta: float = 14,
    logt: int = 7,
    bg_score: float = 0.42,
    method: str = "sparse",
    stride: int = 8,
    n_labels: int | None = None,
) -> np.ndarray:
    """Full PSA / TransCAM propagation for one image: cams (K, H, W), keys (K,) 1-based class
    ids, aff (P,) from AffinityNet on the zero-padded image (grid ceil(H/8) x ceil(W/8)). The walk
    runs on ``aff``'s device and in its dtype (the stage: the runtime's device, float64).

    Returns (H, W) uint8 class ids (the CRF is the crf stage's). ``n_labels``, the class count
    with background, checks the keys when given: each must be below it. Only the background and
    the present classes are propagated; absent classes stay zero in PSA's 21-row version, so the
    arg-max is the same.
    """
    if len(keys) != (cams.shape[0] if cams.ndim == 3 else -1):
        raise BnrError(f"{len(keys)} class keys for CAMs of shape {tuple(cams.shape)}")
    if n_labels is not None and any(not 0 < int(k) < n_labels for k in keys):
        raise BnrError(f"class keys must be foreground ids in 1..{n_labels - 1}: {list(keys)}")
    height, width = cams.shape[1:]
    scores = downsample_scores(cams_with_background(cams, bg_score), stride)
    walk = {"sparse": random_walk_sparse, "dense": random_walk_dense}[method]
    scores = scores.to(device=aff.device, dtype=aff.dtype)  # the walk runs where aff lives
    rw = walk(scores, aff, src.to(aff.device), dst.to(aff.device), beta=beta, logt=logt)
    rows = upsample_argmax(rw.float(), (height, width), stride).cpu()  # (H, W)
    ids = torch.tensor([0, *keys], dtype=torch.uint8)
    return ids[rows].numpy()  # (H, W)
