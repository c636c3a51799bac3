"""The random walk stage's work (PSA): AffinityNet affinities on each image, then the sparse
random walk of its seed CAMs (fixed background score) -> ``<out>/<id>.png`` palette labels.

``scale`` > 1 (``datasets.<d>.random_walk.scale``) runs AffinityNet and the walk on the image
(PIL bicubic) and its CAMs (bilinear) upscaled by it, and brings the labels back to the image
size (nearest): AffinityNet's stride-8 grid of a 128 px demo image is 16 x 16, a quarter of
VOC's density (about 63 x 47), and scale 4 restores it, as the demo's seed scales (64/128/192
for VOC's 256/512/768) do for the CAMs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from bnr.affinity.affinity_model import STRIDE
from bnr.affinity.random_walk import random_walk_segmentation
from bnr.cam.seeds import checked_cams
from bnr.data.transforms import EvalTransform
from bnr.errors import BnrError
from bnr.io import atomic_path, read_image, write_label_png
from bnr.models.pairs import feature_affinity
from bnr.models.resnet38 import AffinityNet
from bnr.runtime import CPU, Runtime


def padded_size(h: int, w: int) -> tuple[int, int]:
    """(H', W'): the size rounded up to multiples of 8 (PSA); a grid too small for the radius
    shrinks the radius (TransCAM, :func:`bnr.models.pairs.shrunk_radius`)."""
    return h + (-h % STRIDE), w + (-w % STRIDE)


@torch.no_grad()
def image_affinity(
    model: AffinityNet, image: np.ndarray, radius: int, *, runtime: Runtime = CPU
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AffinityNet on the normalised image zero-padded to :func:`padded_size` (PSA pads to a
    multiple of 8) -> aff (P,), src (P,), dst (P,) on the (H'/8) x (W'/8) grid.

    The features are computed on ``runtime``'s device under its autocast (``model`` already
    there); the affinities are float32 and, like src / dst, on that device.
    """
    x, _ = EvalTransform()(image, None)  # (3, H, W)
    h, w = x.shape[1:]
    hp, wp = padded_size(h, w)
    x = F.pad(x, (0, wp - w, 0, hp - h))  # (3, H', W')
    with runtime.autocast():
        feats = model(runtime.to_device(x[None]))  # (1, 3, H', W') -> (1, C, H'/8, W'/8)
    aff, src, dst = feature_affinity(feats, radius, shrink=True)  # (1, P) float32
    return aff[0], src, dst


def upscaled(image: np.ndarray, cams: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (H, W, 3) uint8 (PIL bicubic) and CAMs (K, H, W) (bilinear) at ``scale`` times
    the size; unchanged for scale 1."""
    if scale == 1:
        return image, cams
    h, w = image.shape[:2]
    big = np.array(Image.fromarray(image).resize((w * scale, h * scale), Image.BICUBIC))
    big_cams = F.interpolate(torch.as_tensor(cams, dtype=torch.float32)[None],
                             size=(h * scale, w * scale), mode="bilinear",
                             align_corners=False)[0].numpy()
    return big, big_cams


def random_walk_split(
    model: AffinityNet,
    ids: Sequence[str],
    out_dir: Path,
    cam_dir: Path,
    progress: bool = True,
    *,
    root: Path,
    n_labels: int,
    beta: float,
    logt: int,
    radius: int,
    bg_score: float,
    runtime: Runtime = CPU,
    scale: int = 1,
) -> dict:
    """Random-walk labels of ``ids`` into ``out_dir`` (atomic directory of palette PNGs).

    Uses the sparse walk (never an N x N matrix). An image with no foreground class is all
    background (kept and counted). Returns counts and timing. AffinityNet runs on
    ``runtime`` (``model`` already prepared for it); the walk runs there too, in float64.
    The images of dataset ``root`` (``n_labels`` classes); the walk's affinity power ``beta``,
    ``2**logt`` steps, pair ``radius`` and fixed background score ``bg_score``
    (``random_walk`` block; the step decides the score,
    :func:`bnr.affinity.random_walk.walk_background_score`);
    ``scale``: the upscaling of image and CAMs (module docstring).
    """
    root = Path(root)
    model.eval()
    started, no_fg = time.time(), 0
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for img_id in tqdm(ids, desc="random_walk", disable=not progress):
            image = read_image(root / "JPEGImages" / f"{img_id}.jpg")
            classes, cams = checked_cams(cam_dir, img_id, image.shape[:2])
            if len(classes) == 0:
                no_fg += 1
                label = np.zeros(image.shape[:2], np.uint8)
            else:
                h, w = image.shape[:2]
                big, big_cams = upscaled(image, cams, scale)
                try:
                    aff, src, dst = image_affinity(model, big, radius, runtime=runtime)
                except BnrError as exc:
                    raise BnrError(f"{img_id}: {exc}") from None
                aff = aff.double()  # the walk on the runtime's device, in float64
                label = random_walk_segmentation(
                    big_cams, [int(c) for c in classes], aff, src, dst, beta=beta,
                    logt=logt, bg_score=bg_score, method="sparse", stride=STRIDE,
                    n_labels=n_labels,
                )[: h * scale, : w * scale]
                if scale > 1:
                    label = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
            write_label_png(tmp / f"{img_id}.png", label)
    return {"images": len(ids), "all_background": no_fg,
            "seconds": round(time.time() - started, 1)}
