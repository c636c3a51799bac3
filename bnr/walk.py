"""The random walk stage's work (PSA): AffinityNet affinities on each image, then the sparse
random walk of its seed CAMs (fixed background score) -> ``<out>/<id>.png`` palette labels."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bnr.affinity_model import STRIDE
from bnr.config import Params
from bnr.data.classes import class_names
from bnr.data.transforms import EvalTransform
from bnr.errors import BnrError
from bnr.io import atomic_path, read_image, write_label_png
from bnr.models.resnet38 import AffinityNet
from bnr.pairs import feature_affinity
from bnr.postprocessing.random_walk import random_walk_segmentation
from bnr.runtime import CPU, Runtime
from bnr.seeds import checked_cams


def padded_size(h: int, w: int) -> tuple[int, int]:
    """(H', W'): the size rounded up to multiples of 8 (PSA); a grid too small for the radius
    shrinks the radius (TransCAM, :func:`bnr.pairs.shrunk_radius`)."""
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


def random_walk_split(
    params: Params,
    model: AffinityNet,
    ids: Sequence[str],
    out_dir: Path,
    cam_dir: Path,
    progress: bool = True,
    *,
    runtime: Runtime = CPU,
) -> dict:
    """Random-walk labels of ``ids`` into ``out_dir`` (atomic directory of palette PNGs).

    Uses the sparse walk (never an N x N matrix). An image with no foreground class is all
    background (kept and counted). Returns counts and timing. AffinityNet runs on
    ``runtime`` (``model`` already prepared for it); the walk runs there too, in float64.
    """
    cfg, root = params.random_walk, Path(params.data.root)
    n_labels = len(class_names(params.dataset))
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
                try:
                    aff, src, dst = image_affinity(model, image, cfg.radius, runtime=runtime)
                except BnrError as exc:
                    raise BnrError(f"{img_id}: {exc}") from None
                aff = aff.double()  # the walk on the runtime's device, in float64
                h, w = image.shape[:2]
                label = random_walk_segmentation(
                    cams, [int(c) for c in classes], aff, src, dst, beta=cfg.beta,
                    logt=cfg.logt, bg_score=cfg.bg_score, method="sparse", stride=STRIDE,
                    n_labels=n_labels,
                )[:h, :w]
            write_label_png(tmp / f"{img_id}.png", label)
    return {"images": len(ids), "all_background": no_fg,
            "seconds": round(time.time() - started, 1)}
