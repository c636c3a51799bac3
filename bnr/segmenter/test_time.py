"""Segmenter test-time inference, as TransCAM's ``test_deeplab.py`` (the reference) does it.

For each scale s (and its horizontal flip) the normalised image is rescaled, run through the
segmenter, its logits upsampled to the image size and the flipped pass un-flipped; then:

* ``average="logits"`` (TransCAM): the **logits** of all passes are averaged, then softmaxed;
  ``"probs"``: each pass is softmaxed and the probabilities averaged (our earlier choice).
* ``align_corners=True`` (TransCAM): the 1/8 logits are upsampled to the rescaled input
  (``deeplabv1.forward``) and then to the image (``collect_func``), both bilinear with
  ``align_corners=True``; ``False``: one bilinear upsampling straight to the image.
* ``resize="bicubic"`` (TransCAM: ``cv2.resize(fx=s, fy=s, INTER_CUBIC)`` on the image
  *after* normalisation, so on float32): torch bicubic (a = -0.75, no antialiasing, border
  replicated, as cv2) with cv2's output size ``round(n * s)`` and cv2's source mapping
  ``(x + 0.5) / s - 0.5``; ``"bilinear"``: bilinear with the size's own ratio.
* test CRF: ``crf_form="probability"`` (TransCAM ``deeplab/utils/DenseCRF.py``): unary from
  the softmax, 1 mean-field iteration, Gaussian sxy 3 compat 3, bilateral sxy 32 srgb 13
  compat 10 (``evaluate.test_crf``); ``"label"``: the pseudo-label step's label CRF (``crf``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bnr.data.transforms import EvalTransform
from bnr.pseudo_labels.crf import dense_crf_labels, dense_crf_probs
from bnr.runtime import CPU, Runtime

AVERAGES = ("logits", "probs")
RESIZES = ("bicubic", "bilinear")
CRF_FORMS = ("probability", "label")
MIN_SIDE = 8  # a rescaled side is never below one output cell


def scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """cv2's ``fx = fy = scale`` output size: ``round(n * scale)`` (half to even, as cvRound),
    at least :data:`MIN_SIDE`."""
    return max(MIN_SIDE, round(h * scale)), max(MIN_SIDE, round(w * scale))


def rescale(x: torch.Tensor, scale: float, mode: str = "bicubic") -> torch.Tensor:
    """x (B, 3, H, W) float -> (B, 3, h', w'), (h', w') = :func:`scaled_size`.

    ``bicubic``: cv2 ``INTER_CUBIC`` on a float image: the same size is a copy; otherwise
    the source coordinate of output pixel i is ``(i + 0.5) / scale - 0.5`` (cv2 with fx/fy;
    torch's own ``size`` path would use in/out). ``bilinear``: ``align_corners=False`` with
    the size ratio, no antialiasing.
    """
    h, w = x.shape[-2:]
    size = scaled_size(h, w, scale)
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if mode != "bicubic":
        raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {mode!r}")
    if size == (h, w):
        return x
    sh, sw = (float(scale) if n == round(m * scale) else None  # None: clamped to MIN_SIDE
              for n, m in zip(size, (h, w), strict=True))
    return torch.ops.aten.upsample_bicubic2d.default(x, list(size), False, sh, sw)


def upsample_logits(
    logits: torch.Tensor, input_size: tuple[int, int], image_size: tuple[int, int],
    align_corners: bool = True,
) -> torch.Tensor:
    """logits (P, S, h, w) at 1/8 of the rescaled input -> (P, S, H, W) at the image size.

    ``align_corners=True``: TransCAM's two bilinear steps (to ``input_size``, then to
    ``image_size``); ``False``: one bilinear step to ``image_size``.
    """
    if align_corners:
        logits = F.interpolate(logits, size=input_size, mode="bilinear", align_corners=True)
        return F.interpolate(logits, size=image_size, mode="bilinear", align_corners=True)
    return F.interpolate(logits, size=image_size, mode="bilinear", align_corners=False)


@torch.no_grad()
def multiscale_predict(
    model: nn.Module,
    image: torch.Tensor,
    scales: Sequence[float],
    flip: bool = True,
    *,
    average: str = "logits",
    align_corners: bool = True,
    resize: str = "bicubic",
    runtime: Runtime = CPU,
) -> torch.Tensor:
    """Class probabilities of one normalised image (3, H, W) -> (S, H, W) CPU float32.

    Passes: every scale, each with its flip in the same batch; ``average`` / ``align_corners``
    / ``resize`` as in the module docstring. The network runs on ``runtime`` under its
    autocast (``model`` already there); upsampling, softmax and the average are float32.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {', '.join(AVERAGES)}, got {average!r}")
    h, w = image.shape[-2:]
    image = runtime.to_device(image)  # rescaled on the device: one upload per image
    total, passes = None, 0
    for s in scales:
        x = rescale(image[None].float(), s, resize)  # (1, 3, h', w')
        batch = torch.cat([x, x.flip(-1)]) if flip else x  # (P, 3, h', w')
        with runtime.autocast():
            logits = model(runtime.to_device(batch))  # (P, S, h'/8, w'/8)
        out = upsample_logits(logits.float(), tuple(x.shape[-2:]), (h, w), align_corners)
        if average == "probs":
            out = out.softmax(1)  # (P, S, H, W)
        if flip:
            out = torch.stack([out[0], out[1].flip(-1)])  # un-flip the second pass
        summed = out.sum(0)  # (S, H, W)
        total = summed if total is None else total + summed
        passes += out.shape[0]
    assert total is not None
    mean = total / passes  # (S, H, W)
    return (mean.softmax(0) if average == "logits" else mean).cpu()


def predict_labels(
    model: nn.Module,
    image: np.ndarray,
    scales: Sequence[float],
    flip: bool,
    crf: dict | None = None,
    crf_form: str = "probability",
    *,
    average: str = "logits",
    align_corners: bool = True,
    resize: str = "bicubic",
    runtime: Runtime = CPU,
) -> np.ndarray:
    """(H, W, 3) uint8 image -> (H, W) uint8 labels: arg-max of :func:`multiscale_predict`,
    after a dense CRF when ``crf`` holds its keyword arguments: ``crf_form="probability"``
    (:func:`dense_crf_probs` on the probabilities) or ``"label"`` (:func:`dense_crf_labels`
    on the arg-max, skipped when all is background)."""
    if crf_form not in CRF_FORMS:
        raise ValueError(f"crf_form must be one of {', '.join(CRF_FORMS)}, got {crf_form!r}")
    x, _ = EvalTransform()(image, None)  # (3, H, W)
    probs = multiscale_predict(model, x, scales, flip, average=average,
                               align_corners=align_corners, resize=resize, runtime=runtime)
    if crf is not None and crf_form == "probability":
        q = dense_crf_probs(image, probs.numpy(), **crf)  # (S, H, W)
        return np.argmax(q, axis=0).astype(np.uint8)
    label = probs.argmax(0).numpy().astype(np.uint8)
    if crf is not None and (label != 0).any():
        label = dense_crf_labels(image, label, probs.shape[0], **crf)
    return label
