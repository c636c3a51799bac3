"""Does the patch attention behave like an affinity? Diagnostics of a trained CAM network.

For each image (at its own size, one pass, no flip) the mean over blocks of the head-mean
attention, A-bar* (N x N, class token dropped), is compared with the ground truth on the patch
grid (a patch is *object* when at least half its labelled pixels are foreground, *background*
when at least half are background; boundary pixels (255) are not counted):

* ``row_entropy``: mean entropy (nats) of the rows of A* normalised to sum 1; a uniform row has
  ``log N`` (``uniform_entropy``);
* ``bg_to_object`` / ``object_to_object`` / ``object_to_same_class``: mean A-bar* weight per
  key from background queries to object keys, from object queries to object keys, and from
  object queries to keys of their own class. An affinity-like attention has
  ``object_to_same_class`` > ``object_to_object`` > ``bg_to_object``.

``python -m bnr.cam.attention_diagnostics [--params params.yaml] [--model models/cam.pt]
[--images 200] [--out attention.json]`` scores the first images of the seed-evaluation split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from bnr.data.classes import class_names
from bnr.data.transforms import EvalTransform
from bnr.data.voc import VocSegmentation
from bnr.errors import BnrError
from bnr.models.attention import mean_patch_attention


def patch_labels(mask: np.ndarray, patch: int) -> np.ndarray:
    """(H, W) labels -> (h*w,) patch classes: >=1 object class, 0 background, -1 mixed/unknown."""
    h, w = mask.shape[0] // patch, mask.shape[1] // patch
    cells = mask[: h * patch, : w * patch].reshape(h, patch, w, patch).transpose(0, 2, 1, 3)
    cells = cells.reshape(h * w, patch * patch)
    out = np.full(h * w, -1, np.int64)
    for i, cell in enumerate(cells):
        valid = cell[cell != 255]
        if valid.size == 0:
            continue
        fg = valid[valid > 0]
        if fg.size * 2 >= valid.size:
            out[i] = np.bincount(fg).argmax()
        elif (valid == 0).sum() * 2 >= valid.size:
            out[i] = 0
    return out


def attention_stats(attn_mean: np.ndarray, labels: np.ndarray) -> dict:
    """Statistics of one image: ``attn_mean`` (N, N) block-mean A-bar*, ``labels`` (N,)."""
    rows = attn_mean / np.clip(attn_mean.sum(1, keepdims=True), 1e-12, None)
    entropy = float(-(rows * np.log(np.clip(rows, 1e-12, None))).sum(1).mean())
    obj, bg = labels > 0, labels == 0
    out = {"row_entropy": entropy, "uniform_entropy": float(np.log(len(labels)))}
    if obj.any() and bg.any():
        out["bg_to_object"] = float(attn_mean[np.ix_(bg, obj)].mean())
    if obj.any():
        out["object_to_object"] = float(attn_mean[np.ix_(obj, obj)].mean())
        same = labels[:, None] == labels[None, :]
        out["object_to_same_class"] = float(attn_mean[obj][same[obj] & obj[None, :]].mean())
    return out


@torch.no_grad()
def diagnose(model: torch.nn.Module, dataset: VocSegmentation, images: int) -> dict:
    """Mean of :func:`attention_stats` over the first ``images`` items of ``dataset``."""
    model.eval()
    patch = model.cfg.patch_size
    totals: dict[str, list[float]] = {}
    for index in range(min(images, len(dataset))):
        item = dataset[index]
        image, mask = item["image"], np.asarray(item["mask"])
        h, w = (image.shape[-2] // patch) * patch, (image.shape[-1] // patch) * patch
        out = model(image[None, :, :h, :w])
        attn = mean_patch_attention(out["attn_sum"], model.num_blocks)[0].numpy()  # A-bar* (N, N)
        for key, value in attention_stats(attn, patch_labels(mask[:h, :w], patch)).items():
            totals.setdefault(key, []).append(value)
    return {key: round(float(np.mean(v)), 6) for key, v in totals.items()} | {
        "images": min(images, len(dataset))}


def main(argv: list[str] | None = None) -> None:
    from bnr.cam.cam_model import load_cam_model
    from bnr.config.params import load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", default="models/cam.pt")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        model = load_cam_model(Path(args.model), params.per_dataset.train_cam.model,
                               params.dataset)
        dataset = VocSegmentation(params.data.root, params.data.seed_eval_split,
                                  class_names(params.dataset), with_mask=True,
                                  transform=EvalTransform(), mask_dir=params.data.gt_dir)
        result = diagnose(model, dataset, args.images)
    except BnrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
