"""Stage evaluate: segmentation mIoU on the val split (paper Table 2), predictions, overlays
and, for VOC 2012 with a test split, the evaluation-server archive."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from bnr.config.params import Params
from bnr.data.checks import check_stage_inputs, server_archive_skip, split_overlap
from bnr.data.classes import class_names
from bnr.data.voc import read_mask, read_split
from bnr.io import atomic_path, read_image, read_label_png
from bnr.metrics import mean_iou, per_class_table, write_class_table
from bnr.pipeline.metrics_files import write_metrics
from bnr.pipeline.protocol import protocol_record
from bnr.pipeline.visualize import SEGMENTATION_TITLES, colorize_labels, titled_panel
from bnr.runtime import start_runtime
from bnr.segmenter.evaluation import evaluate_split, write_label_tar, write_server_archive
from bnr.segmenter.segmenter_model import load_segmenter


@dataclass(frozen=True)
class Inputs:
    segmenter_checkpoint: Path = field(metadata={"help": "trained segmenter (train_segmenter)"})


@dataclass(frozen=True)
class Outputs:
    predictions: Path = field(metadata={"help": "val predictions, palette PNGs (folder)"})
    server_archive: Path = field(metadata={"help": "VOC test predictions for the evaluation "
                                                   "server (tar; empty when not configured)"})
    metrics: Path = field(metadata={"help": "val mIoU (JSON)"})
    per_class: Path = field(metadata={"help": "per-class IoU, paper Table 2 layout (CSV; a "
                                              ".md twin beside it)"})
    overlays: Path = field(metadata={"help": "image / ground truth / prediction panels"})


def check(cfg: Params, inputs: Inputs) -> None:
    """The val split's files, and no val image among the training images (unless allowed)."""
    check_stage_inputs(cfg.data.root, [(cfg.data.val_split, cfg.data.gt_dir)])
    train_overlap(cfg)


def train_overlap(cfg: Params) -> dict:
    """The val ids also in ``train_split`` / ``infer_split`` (the protocol's record); an error
    unless ``evaluate.allow_train_overlap``."""
    data = cfg.data
    return split_overlap(data.root, data.val_split, [data.train_split, data.infer_split],
                         cfg.evaluate.allow_train_overlap, "evaluate.allow_train_overlap")


def prediction_options(cfg: Params) -> dict:
    """The :func:`bnr.segmenter.test_time.predict_labels` keyword arguments (TransCAM
    test_deeplab.py): ``datasets.<d>.evaluate.scales`` and the ``evaluate`` block; the CRF
    settings of ``evaluate.test_crf`` or, with ``crf_form: label``, of ``crf``."""
    ev = cfg.evaluate
    crf = None
    if ev.crf:
        source = ev.test_crf if ev.crf_form == "probability" else cfg.crf
        crf = {k: v for k, v in dataclasses.asdict(source).items() if k != "workers"}
    return {"scales": tuple(cfg.per_dataset.evaluate.scales), "flip": ev.flip, "crf": crf,
            "crf_form": ev.crf_form, "average": ev.average,
            "align_corners": ev.align_corners, "resize": ev.resize}


def run(cfg: Params, inputs: Inputs, outputs: Outputs) -> dict:
    """Predict and score ``val_split`` (and the server's ``test_split``)."""
    data, ev = cfg.data, cfg.evaluate
    names = class_names(cfg.dataset)
    skip = server_archive_skip(cfg.dataset, data.root, data.test_split)  # "" = it is written
    opts = prediction_options(cfg)  # test-time settings (TransCAM test_deeplab.py)
    runtime = start_runtime(cfg.runtime)
    with torch.no_grad():
        model = runtime.prepare_model(load_segmenter(
            inputs.segmenter_checkpoint, cfg.train_segmenter.arch,
            cfg.per_dataset.train_segmenter.backbone, cfg.dataset))
        conf, stats = evaluate_split(
            model, outputs.predictions, read_split(data.root, data.val_split),
            root=Path(data.root), gt_dir=data.gt_dir, n_labels=len(names), options=opts,
            runtime=runtime)
        miou = round(mean_iou(conf) * 100, 3)
        archive = outputs.server_archive  # always written (a DVC out): empty on a skip
        if skip:
            write_label_tar(archive, [])
            server = {"images": 0, "archive": str(archive),
                      "note": f"no server predictions ({skip})"}
        else:
            server = write_server_archive(
                model, archive, dataset=cfg.dataset, root=Path(data.root),
                test_split=data.test_split, options=opts, runtime=runtime)
    # paper Table 2 layout (background, classes, mIoU), CSV and markdown
    write_class_table(per_class_table(conf, names), outputs.per_class.with_suffix(""))
    numbers = {
        "miou": miou, "images": stats["images"], "seconds": stats["seconds"],
        "server_archive_written": int(server["images"] > 0),
    }
    write_metrics(outputs.metrics, numbers, protocol_record(
        cfg, dataset=cfg.dataset, split=data.val_split, images=stats["images"],
        ground_truth=data.gt_dir, scales=list(cfg.per_dataset.evaluate.scales), flip=ev.flip,
        crf=opts["crf"] or False, crf_form=opts["crf_form"], average=opts["average"],
        align_corners=opts["align_corners"], resize=opts["resize"], method=cfg.method,
        noise_scale=cfg.noise_scale, seed=cfg.seed,
        arch=cfg.train_segmenter.arch, backbone=cfg.per_dataset.train_segmenter.backbone,
        segmenter_trained_on=cfg.train_segmenter.labels,
        metric="mIoU (%) over all classes from the accumulated confusion matrix",
        runtime=runtime.record(), server_archive=server, train_overlap=train_overlap(cfg),
        per_class=str(outputs.per_class),
    ))
    print(f"segmentation mIoU {miou:.2f} on {data.val_split} ({stats['images']} images, "
          f"{stats['seconds']} s); {server['note']}")
    write_overlays(cfg, read_split(data.root, data.val_split)[: ev.overlays],
                   outputs.predictions, outputs.overlays)
    return numbers


def write_overlays(cfg: Params, ids: list[str], pred_dir: Path, out: Path) -> None:
    """image | ground truth | prediction panels for ``ids`` (DVC image plots)."""
    root, n = Path(cfg.data.root), len(class_names(cfg.dataset))
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for img_id in ids:
            image = read_image(root / "JPEGImages" / f"{img_id}.jpg")
            gt = read_mask(root / cfg.data.gt_dir / f"{img_id}.png", n, image.shape[:2])
            pred = read_label_png(pred_dir / f"{img_id}.png")
            tiles = [image, colorize_labels(gt), colorize_labels(pred)]
            Image.fromarray(titled_panel(tiles, SEGMENTATION_TITLES, class_names(cfg.dataset))
                            ).save(tmp / f"{img_id}.png")
