"""Stage eval_seeds: seed mIoU over the background-threshold sweep, curve and overlays."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bnr.cam import cams_to_seeds
from bnr.cam_model import build_cam_model, cam_model_meta
from bnr.checkpoints import load_checkpoint, load_state_strict
from bnr.config import Params
from bnr.data.classes import class_names
from bnr.data.transforms import EvalTransform
from bnr.data.voc import VocSegmentation
from bnr.io import atomic_path, write_json, write_text
from bnr.metrics import mean_iou, per_class_table, write_class_table
from bnr.metrics_files import write_metrics
from bnr.protocol import protocol_record
from bnr.seeds import load_cams, seed_miou_sweep, threshold_grid
from bnr.stage import run_stage
from bnr.visualize import class_token_attention, colorize_labels, heat_overlay, panel


def main(params: Params) -> None:
    names = class_names(params.dataset)
    cfg = params.eval_seeds
    data = params.data
    dataset = VocSegmentation(data.root, data.seed_eval_split, names, mask_dir=data.gt_dir)
    thresholds = threshold_grid(cfg.threshold_start, cfg.threshold_stop, cfg.threshold_step)
    confs = seed_miou_sweep(Path("data/cams"), Path(data.root), dataset.ids, data.gt_dir,
                            len(names), thresholds)
    mious = np.array([mean_iou(c) for c in confs])
    best = int(np.nanargmax(mious))
    write_text("metrics/seeds_threshold.csv", pd.DataFrame(
        {"threshold": thresholds, "miou": np.round(mious * 100, 3)}).to_csv(index=False))
    write_class_table(per_class_table(confs[best], names), Path("metrics/seeds_per_class"))
    write_metrics("metrics/seeds.json", {
        "miou": round(float(mious[best]) * 100, 3),  # first: dvc exp show --csv names it
        "best_threshold": float(thresholds[best]),
        "images": len(dataset.ids),
    }, protocol_record(
        params, dataset=params.dataset, split=data.seed_eval_split,
        images=len(dataset.ids), ground_truth=data.gt_dir, scales=list(data.infer_scales),
        flip=params.infer_seeds.flip, resize=params.infer_seeds.resize, crf=False,
        cam_source=params.infer_seeds.source,
        threshold="swept", thresholds=[float(thresholds[0]), float(thresholds[-1]),
                                       cfg.threshold_step],
        method=params.method, noise_scale=params.noise_scale, seed=params.seed,
        metric="mIoU (%) over all classes from the accumulated confusion matrix",
        per_class="metrics/seeds_per_class.csv",
    ))
    # the one number the crf stage needs, in a file of its own: a dep that changes only with it
    write_json("data/seed_threshold.json", {"best_threshold": float(thresholds[best])})
    print(f"seed mIoU {mious[best] * 100:.2f} at threshold {thresholds[best]:.2f}")
    write_overlays(params, dataset, float(thresholds[best]), Path("metrics/overlays/seeds"))


def write_overlays(params: Params, dataset: VocSegmentation, threshold: float, out: Path) -> None:
    """image | ground truth | seed CAM | seeds | class-token attention, for the first images."""
    ckpt = Path("models/cam.pt")
    model = build_cam_model(params, pretrained=False)
    load_state_strict(model, load_checkpoint(ckpt, cam_model_meta(params))["model"], ckpt)
    model.eval()
    size = params.data.infer_scales[len(params.data.infer_scales) // 2]
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for index in range(min(params.eval_seeds.overlays, len(dataset))):
            item = dataset[index]
            image, mask = item["image"], item["mask"]
            classes, cams = load_cams(Path("data/cams"), item["id"], mask.shape)
            heat = cams.max(0) if len(classes) else np.zeros(mask.shape, np.float32)
            seeds = cams_to_seeds(cams, classes, threshold)
            attn = class_token_attention(model, EvalTransform()(image, None)[0], size)
            tiles = [image, colorize_labels(mask), heat_overlay(image, heat),
                     colorize_labels(seeds), heat_overlay(image, attn)]
            Image.fromarray(panel(tiles)).save(tmp / f"{item['id']}.png")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main, __doc__)
