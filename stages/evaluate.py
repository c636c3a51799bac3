"""Stage evaluate: segmentation mIoU on the val split (paper Table 2), predictions, overlays
and, for VOC 2012 with a test split, the evaluation-server archive."""

from pathlib import Path

import torch
from PIL import Image

from bnr.config import Params
from bnr.data.checks import check_split_files, server_archive_skip
from bnr.data.classes import class_names
from bnr.data.voc import read_mask, read_split
from bnr.io import atomic_path, read_image, read_label_png
from bnr.metrics import mean_iou, per_class_table, write_class_table
from bnr.metrics_files import write_metrics
from bnr.postprocessing.test_time import prediction_options
from bnr.protocol import protocol_record
from bnr.runtime import start_runtime
from bnr.segmentation import evaluate_split, write_label_tar, write_server_archive
from bnr.segmenter_model import load_segmenter
from bnr.stage import run_stage
from bnr.visualize import colorize_labels, panel

PRED_DIR = Path("data/predictions")


def main(params: Params) -> None:
    data, cfg = params.data, params.evaluate
    names = class_names(params.dataset)
    check_split_files(data.root, data.val_split, data.gt_dir)  # before the long val pass
    # why no server archive ("" = it is written)
    skip = server_archive_skip(params.dataset, data.root, data.test_split)
    runtime = start_runtime(params.runtime)
    model = runtime.prepare_model(load_segmenter(params, Path("models/segmenter.pt")))
    conf, stats = evaluate_split(params, model, PRED_DIR, runtime=runtime)
    miou = round(mean_iou(conf) * 100, 3)
    archive = Path("data/server_archive.tar")  # always written (a DVC out): empty on a skip
    if skip:
        write_label_tar(archive, [])
        server = {"images": 0, "archive": str(archive), "note": f"no server predictions ({skip})"}
    else:
        server = write_server_archive(params, model, archive, runtime=runtime)
    # paper Table 2 layout (background, classes, mIoU): metrics/segmentation_per_class.{csv,md}
    write_class_table(per_class_table(conf, names), Path("metrics/segmentation_per_class"))
    opts = prediction_options(params)  # test-time settings (TransCAM test_deeplab.py)
    write_metrics("metrics/segmentation.json", {
        "miou": miou, "images": stats["images"], "seconds": stats["seconds"],
        "server_archive_written": int(server["images"] > 0),
    }, protocol_record(
        params, dataset=params.dataset, split=data.val_split, images=stats["images"],
        ground_truth=data.gt_dir, scales=list(data.eval_scales), flip=cfg.flip,
        crf=opts["crf"] or False, crf_form=opts["crf_form"], average=opts["average"],
        align_corners=opts["align_corners"], resize=opts["resize"], method=params.method,
        noise_scale=params.noise_scale, seed=params.seed,
        arch=params.train_segmenter.arch, backbone=data.segmenter_backbone,
        metric="mIoU (%) over all classes from the accumulated confusion matrix",
        runtime=runtime.record(), server_archive=server,
        per_class="metrics/segmentation_per_class.csv",
    ))
    print(f"segmentation mIoU {miou:.2f} on {data.val_split} ({stats['images']} images, "
          f"{stats['seconds']} s); {server['note']}")
    write_overlays(params, read_split(data.root, data.val_split)[: cfg.overlays],
                   Path("metrics/overlays/segmentation"))


def write_overlays(params: Params, ids: list[str], out: Path) -> None:
    """image | ground truth | prediction panels for ``ids`` (DVC image plots)."""
    root, n = Path(params.data.root), len(class_names(params.dataset))
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for img_id in ids:
            image = read_image(root / "JPEGImages" / f"{img_id}.jpg")
            gt = read_mask(root / params.data.gt_dir / f"{img_id}.png", n, image.shape[:2])
            pred = read_label_png(PRED_DIR / f"{img_id}.png")
            tiles = [image, colorize_labels(gt), colorize_labels(pred)]
            Image.fromarray(panel(tiles)).save(tmp / f"{img_id}.png")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main, __doc__)
