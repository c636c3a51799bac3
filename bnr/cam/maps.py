"""Class activation maps refined by attention (TransCAM, paper eq. 3-5) and seeds.

Small functions on tensors; shapes in each docstring. ``S`` classes (background is channel 0),
``N = h * w`` patch tokens (plus one class token in raw attention), ``K`` classes of one image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from bnr.data.transforms import normalize
from bnr.models.attention import patch_attention
from bnr.runtime import CPU, Runtime

RESAMPLES = ("pil_bicubic", "bilinear")


def refine_cam(cam: Tensor, attn_patch: Tensor) -> Tensor:
    """M*_s = A* . M_s for every class s (eq. 5): (B, S, h, w), (B, N, N) -> (B, S, h, w).

    ``M*[b, s, i] = sum_j A*[b, i, j] M[b, s, j]`` with i, j patch indices in row-major order.
    """
    b, s, h, w = cam.shape
    if attn_patch.shape != (b, h * w, h * w):
        raise ValueError(f"attention {tuple(attn_patch.shape)} does not match CAM grid {h}x{w}")
    flat = cam.reshape(b, s, h * w)  # (B, S, h, w) -> (B, S, N)
    refined = torch.bmm(flat, attn_patch.transpose(1, 2))  # (B, S, N) x (B, N, N) -> (B, S, N)
    return refined.reshape(b, s, h, w)


CAM_SOURCES = ("transcam", "conv", "clsattn", "attnagg")


def cam_from_outputs(outputs: dict, source: str = "transcam") -> Tensor:
    """The map seeds are made from, (B, S, h, w), from ``cam`` M and ``attn_sum`` A.

    ``transcam`` (the paper): M* = A* . M. The others are the alternatives of the public
    TransCAM code, for diagnosis: ``conv`` = M alone; ``clsattn`` = the class-token row of A
    (its patch part, reshaped to the grid) times M; ``attnagg`` = A*^T . M.
    """
    cam, attn = outputs["cam"], outputs["attn_sum"]
    if source == "transcam":
        return refine_cam(cam, patch_attention(attn))
    if source == "conv":
        return cam
    if source == "clsattn":
        b, _, h, w = cam.shape
        return attn[:, 0, 1:].reshape(b, 1, h, w) * cam  # (B, N) -> (B, 1, h, w), broadcast
    if source == "attnagg":
        return refine_cam(cam, patch_attention(attn).transpose(1, 2))
    raise ValueError(f"source must be one of {', '.join(CAM_SOURCES)}, got {source!r}")


def _pass_sizes(
    height: int, width: int, scales: Sequence[int], resize: str, multiple: int
) -> list[tuple[int, int]]:
    sizes = []
    for s in scales:
        if resize == "square":  # the public code ignores the aspect ratio
            sizes.append((s, s))
        elif resize == "keep_aspect":  # long side = s, both sides rounded to the patch multiple
            f = s / max(height, width)
            sizes.append(
                (max(multiple, round(height * f / multiple) * multiple),
                 max(multiple, round(width * f / multiple) * multiple))
            )
        else:
            raise ValueError(f"resize must be 'square' or 'keep_aspect', got {resize!r}")
    return sizes


def _normalised(image: Tensor | np.ndarray) -> Tensor:
    """(3, H, W) float as given; uint8 (3, H, W) tensor or (H, W, 3) array -> normalised."""
    if isinstance(image, np.ndarray):
        return normalize(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    return normalize(image) if image.dtype == torch.uint8 else image


def scaled_input(image: Tensor | np.ndarray, size: tuple[int, int], resample: str) -> Tensor:
    """One seed-inference pass input, normalised (1, 3, h, w) for ``size`` = (h, w).

    ``pil_bicubic`` (TransCAM ``voc12/data.py``): the uint8 image, (H, W, 3) array or (3, H, W)
    tensor, resized by PIL's bicubic filter (antialiased when shrinking, rounded to uint8), then
    normalised. ``bilinear``: the normalised float image (3, H, W) (a uint8 one is normalised
    first) resized bilinearly without antialiasing, on its device.
    """
    if resample not in RESAMPLES:
        raise ValueError(f"resample must be one of {', '.join(RESAMPLES)}, got {resample!r}")
    if resample == "bilinear":
        x = _normalised(image)[None]  # (1, 3, H, W)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if image.dtype not in (np.uint8, torch.uint8):
        raise ValueError("resample='pil_bicubic' needs the uint8 image, got "
                         f"{image.dtype} (pass the image before normalisation)")
    arr = image.permute(1, 2, 0).cpu().numpy() if isinstance(image, Tensor) else image
    resized = Image.fromarray(np.ascontiguousarray(arr)).resize(size[::-1], Image.BICUBIC)
    return normalize(torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1))[None]


@torch.no_grad()
def multiscale_cam(
    model: nn.Module,
    image: Tensor,
    classes: Sequence[int],
    scales: Sequence[int],
    *,
    flip: bool = True,
    resize: str = "square",
    batch_passes: bool = True,
    patch_multiple: int = 16,
    source: str = "transcam",
    resample: str,
    runtime: Runtime = CPU,
) -> Tensor:
    """Seed CAMs of one image, exactly as TransCAM infers them (``source``: cam_from_outputs).

    ``image``: normalised (3, H, W), or the uint8 image ((H, W, 3) array or (3, H, W) tensor),
    which ``resample="pil_bicubic"`` (TransCAM) needs (:func:`scaled_input`; required: the
    pipeline's value is ``infer_seeds.resample``). For each scale
    (and its flip), the image is resized, M* is
    computed, its foreground channels are upsampled bilinearly to (H, W), absent classes are
    zeroed and flipped passes un-flipped; the passes are summed, ReLU'd and each class is
    min-max normalised to [0, 1]. Returns (K, H, W) for ``classes`` (1-based indices, K may be
    0). ``batch_passes`` runs an image's flipped pass in the same batch as the plain one.

    ``runtime``: the network runs on its device under its autocast; the refinement and all
    arithmetic after the network are float32, and the result is a CPU float32 tensor.
    ``model`` must already be on that device (``runtime.prepare_model``).
    """
    channels_last_input = isinstance(image, np.ndarray)  # (H, W, 3)
    h, w = image.shape[:2] if channels_last_input else image.shape[-2:]
    classes = list(classes)
    if resample == "bilinear":
        image = runtime.to_device(_normalised(image))  # resized on the device: one upload
    total = None
    for size in _pass_sizes(h, w, scales, resize, patch_multiple):
        scaled = runtime.to_device(scaled_input(image, size, resample))  # (1, 3, s, s)
        batch = [scaled, scaled.flip(-1)] if flip else [scaled]  # (1, 3, s, s) each
        groups = [torch.cat(batch)] if batch_passes else batch
        outs = []
        for g in groups:
            with runtime.autocast():
                out = model(runtime.to_device(g))  # channels_last when the runtime asks
            # M* = A* . M in float32: attention sums of 10+ blocks lose digits in bfloat16
            refined = {"cam": out["cam"].float(), "attn_sum": out["attn_sum"].float()}
            outs.append(cam_from_outputs(refined, source))  # (P, S, h', w')
        cams = torch.cat(outs)  # (P, S, h', w'), P = 2 with flip
        cams = F.interpolate(cams[:, 1:], size=(h, w), mode="bilinear", align_corners=False)
        if flip:
            cams = torch.stack([cams[0], cams[1].flip(-1)])  # un-flip the second pass
        summed = cams.sum(0)  # (S-1, H, W)
        total = summed if total is None else total + summed
    assert total is not None
    keep = torch.tensor([c - 1 for c in classes], dtype=torch.long, device=total.device)
    cams = F.relu(total[keep])  # (K, H, W): absent classes dropped (zeroed)
    return normalize_cams(cams).cpu()  # callers save / threshold on the CPU


def normalize_cams(cams: Tensor, eps: float = 1e-5) -> Tensor:
    """Min-max normalise each class map to [0, 1]: (K, H, W) -> (K, H, W).

    The paper's rule: an all-zero present class stays 0 and, in :func:`cams_to_seeds`, a tie
    with the threshold is foreground ("equal to or above"); TransCAM (``infer_TransCAM.py``)
    subtracts 1e-5 after the minimum, so such a class is negative and a tie is background.
    """
    if cams.numel() == 0:
        return cams
    flat = cams.reshape(cams.shape[0], -1)
    lo = flat.min(1).values[:, None, None]
    hi = flat.max(1).values[:, None, None]
    return (cams - lo) / (hi - lo + eps)


def cams_to_seeds(
    cams: np.ndarray | Tensor, classes: Sequence[int], threshold: float
) -> np.ndarray:
    """Seed labels from normalised CAMs: argmax over classes, below ``threshold`` background.

    ``cams``: (K, H, W) in [0, 1] for the 1-based ``classes``; returns (H, W) uint8/int labels
    (0 = background). An image with no class (K = 0) is all background.
    """
    cams = cams.float().numpy() if isinstance(cams, Tensor) else np.asarray(cams, np.float32)
    if cams.shape[0] == 0:
        return np.zeros(cams.shape[1:], np.uint8)
    keys = np.asarray(list(classes), np.int64)
    best = cams.argmax(0)
    peak = cams.max(0)
    return np.where(peak >= threshold, keys[best], 0).astype(np.uint8)
