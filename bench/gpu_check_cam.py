"""Sections 1-3 of bench/gpu_check.py: train_cam throughput, seed inference throughput and the
seed mIoU of the pipeline's checkpoint, float32 vs bfloat16. Each runs the library's code as the
stage does: ``bnr.cam.training``'s optimizer and training step, ``bnr.cam.seeds.item_seed_cams``
(infer_seeds' CAMs of one image, as stored), ``bnr.cam.cam_model.load_cam_model`` and eval_seeds'
threshold sweep and scoring."""

from __future__ import annotations

import math
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.gpu_check_common import (
    NUM_CLASSES,
    REPO,
    TARGET_INFER_SPEEDUP,
    TARGET_MIOU_POINTS,
    Settings,
    free_memory,
    met_text,
    peak_mib,
    precision_runtime,
    split_deadline,
    timed_loop,
)

# ----------------------------------------------------------------------------------------------
# 1. train_cam throughput


def train_variant(s: Settings, device: torch.device, bf16: bool, deadline: float) -> dict:
    """Images/s and peak memory of the train_cam step on random device tensors: the library's
    AdamW groups and step function (``bnr.cam.training.cam_optimizer``, ``cam_training_step``:
    forward under the runtime's autocast, the loss in float32), then backward and the optimizer
    step as the engine runs them."""
    from bnr.cam.cam_model import build_cam_model
    from bnr.cam.training import cam_optimizer, cam_training_step
    from bnr.runtime import Runtime

    free_memory(device)
    # bfloat16 autocast + channels_last (the CNN branch's convolutions on tensor cores): what
    # runtime "auto" picks on CUDA
    runtime = Runtime(device, "bfloat16" if bf16 else "float32", channels_last=bf16)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: conformer_s init on CPU takes seconds
        model = build_cam_model(s.train_preset, "voc2012", "official")
    model = runtime.prepare_model(model)
    model.train()
    optimizer = cam_optimizer(model, s.train_lr, s.train_weight_decay, s.train_adam_eps)
    train_step = cam_training_step("bnr", 1.0, model.cfg.depth, runtime)
    b, size = s.train_batch, s.train_size
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(b, 3, size, size, device=device, generator=gen)
    labels = (torch.rand(b, NUM_CLASSES, device=device, generator=gen) < 0.1).float()
    labels[:, 0] = 1.0  # background channel set, as labels_to_multihot does
    labels[torch.arange(b, device=device),
           torch.randint(1, NUM_CLASSES, (b,), device=device, generator=gen)] = 1.0
    batch = {"image": x, "labels": labels}
    last: dict[str, float] = {}

    def step() -> None:
        loss, _ = train_step(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        last["loss"] = float(loss.detach())  # one sync per step, as the engine's logging

    n, elapsed = timed_loop(step, device, s.train_warmup, s.train_iters, deadline, min_iters=2)
    return {  # the caller frees this variant's memory before the next one
        "variant": "bfloat16 autocast + channels_last" if bf16 else "float32",
        "images_per_s": n * b / elapsed,
        "step_s": elapsed / n,
        "timed_iters": n,
        "peak_mib": peak_mib(device),
        "last_loss": last.get("loss", float("nan")),
    }


def section_train(s: Settings, device: torch.device, seconds: float) -> dict:
    end = time.perf_counter() + seconds
    rows = []
    for i, bf16 in enumerate((False, True)):
        try:  # per variant: a float32 OOM must not hide the bfloat16 figures (or vice versa)
            row = train_variant(s, device, bf16, split_deadline(end, 2 - i))
            if not math.isfinite(row["last_loss"]):
                raise RuntimeError(f"loss is not finite ({row['last_loss']})")
        except Exception as exc:  # noqa: BLE001 - reported in the row and the notes
            traceback.print_exc(limit=4, file=sys.stderr)
            row = {"variant": "bfloat16 autocast + channels_last" if bf16 else "float32",
                   "error": f"{type(exc).__name__}: {exc}"[:500]}
        rows.append(row)
        free_memory(device)
    ok = [r for r in rows if "error" not in r]
    if not ok:
        raise RuntimeError("; ".join(f"{r['variant']}: {r['error']}" for r in rows))
    notes = [
        f"{s.train_preset}, {s.train_size}x{s.train_size}, batch {s.train_batch}, "
        f"{NUM_CLASSES} classes, method bnr (L_cls + L_M**, noise_scale 1), AdamW (lr "
        f"{s.train_lr:g}, weight decay {s.train_weight_decay:g}); "
        f"{s.train_warmup} warm-up + 1 sizing step untimed",
    ]
    result: dict[str, Any] = {
        "columns": ["variant", "images_per_s", "step_s", "timed_iters", "peak_mib", "last_loss"],
        "rows": rows,
        "notes": notes,
    }
    if len(ok) == 2:
        result["speedup_bf16"] = ok[1]["images_per_s"] / ok[0]["images_per_s"]
        notes.append(f"bfloat16 / float32 images/s: {result['speedup_bf16']:.2f}x")
    notes += [f"ERROR {r['variant']}: {r['error']}" for r in rows if "error" in r]
    return result


# ----------------------------------------------------------------------------------------------
# 2. / 3. seed inference


def seed_item(image: np.ndarray, classes: Sequence[int]) -> dict:
    """A dataset item as ``bnr.cam.seeds.item_seed_cams`` reads it: the (H, W, 3) uint8
    ``image`` and the multi-hot ``labels`` (background set) of ``classes``."""
    labels = torch.zeros(NUM_CLASSES)
    labels[[0, *classes]] = 1.0
    return {"image": image, "labels": labels}


def seed_cams(model: torch.nn.Module, item: dict, options: dict, device: torch.device,
              bf16: bool) -> tuple[np.ndarray, np.ndarray]:
    """(classes, CAMs) of ``item`` as infer_seeds stores them (``item_seed_cams`` with
    ``options``), the network on ``device`` in float32 or bfloat16 autocast; the CAMs (K, H, W)
    in float32 as eval_seeds reads them back (``load_cams``)."""
    from bnr.cam.seeds import item_seed_cams

    classes, cams = item_seed_cams(model, item, **options,
                                   runtime=precision_runtime(device, bf16))
    return classes, cams.astype(np.float32)


def section_infer(s: Settings, device: torch.device, seconds: float) -> dict:
    from bnr.cam.cam_model import build_cam_model

    torch.manual_seed(0)
    with torch.device(device):
        model = build_cam_model(s.infer_preset, "voc2012", "official").eval()
    rng = np.random.default_rng(0)
    h, w = s.infer_hw
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # CPU uint8, as read
              for _ in range(s.infer_images)]
    options = {"scales": s.infer_scales, "flip": True, "resize": "square",
               "patch_multiple": model.cfg.patch_size, "source": "transcam",
               "resample": s.infer_resample}
    variants = [  # (label, bfloat16, batch_passes)
        ("float32, one pass at a time (batch_passes=False)", False, False),
        ("float32, flips batched (batch_passes=True)", False, True),
        ("bfloat16 autocast, flips batched (batch_passes=True)", True, True),
    ]
    end = time.perf_counter() + seconds
    rows = []
    maps: dict[bool, np.ndarray] = {}
    for i, (label, bf16, batched) in enumerate(variants):
        free_memory(device)
        opts = {**options, "batch_passes": batched}

        def one_round(bf16: bool = bf16, opts: dict = opts,
                      model: torch.nn.Module = model) -> None:
            for img in images:
                seed_cams(model, seed_item(img, s.infer_classes), opts, device, bf16)

        n, elapsed = timed_loop(one_round, device, 1, s.infer_rounds,
                                split_deadline(end, len(variants) - i))
        rows.append({"variant": label, "images_per_s": n * len(images) / elapsed,
                     "s_per_image": elapsed / (n * len(images)), "timed_images": n * len(images),
                     "peak_mib": peak_mib(device)})
        if batched:  # all classes: with random weights a given class's map may be all zero
            maps[bf16] = seed_cams(model, seed_item(images[0], range(1, NUM_CLASSES)), opts,
                                   device, bf16)[1]
    base, target = rows[0], rows[-1]
    ratio = target["images_per_s"] / base["images_per_s"]
    diff = float(np.abs(maps[True] - maps[False]).max())
    return {
        "columns": ["variant", "images_per_s", "s_per_image", "timed_images", "peak_mib"],
        "rows": rows,
        "speedup": ratio,
        "target_met": ratio >= TARGET_INFER_SPEEDUP,
        "max_abs_diff_bf16_vs_fp32": diff,
        "notes": [
            f"{s.infer_preset} (random init), {h}x{w} random uint8 images, scales "
            f"{'/'.join(map(str, s.infer_scales))} square ({s.infer_resample}) + flip, classes "
            f"{list(s.infer_classes)}, CAMs back on the CPU as float16 (as infer_seeds stores "
            "them)",
            f"bfloat16 batched / float32 one at a time: {ratio:.2f}x (target >= "
            f"{TARGET_INFER_SPEEDUP:.0f}x: {met_text(ratio >= TARGET_INFER_SPEEDUP)})",
            f"seed maps bfloat16 vs float32 (batched, first image, all 20 classes): max |diff| "
            f"{diff:.2e} (random weights: a sanity check only; section 3 uses trained ones)",
        ],
    }


def seed_confusions(model: torch.nn.Module, item: dict, thresholds: np.ndarray,
                    num_classes: int, options: dict, device: torch.device,
                    bf16: bool) -> np.ndarray:
    """(T, C, C) confusion matrices of one item's seeds at every threshold against its
    ``mask``: its CAMs as infer_seeds stores them, scored as eval_seeds scores them."""
    from bnr.cam.seeds import threshold_confusions

    classes, cams = seed_cams(model, item, options, device, bf16)
    return threshold_confusions(cams, classes, item["mask"], thresholds, num_classes)


def resolve(path: str | Path) -> Path:
    """``path``, relative to the repository when not absolute."""
    path = Path(path)
    return path if path.is_absolute() else REPO / path


def section_miou(s: Settings, device: torch.device, seconds: float) -> dict:
    """Seed mIoU of the pipeline's checkpoint on the first images, float32 vs bfloat16: the
    CAMs as infer_seeds makes them (its options from ``--params``), scored as eval_seeds."""
    ckpt = resolve(s.checkpoint)
    if not ckpt.is_file():
        return {"skipped": f"{ckpt} not found (run the pipeline up to train_cam, or carry it)"}
    from bnr.config.params import load_params

    params = load_params(resolve(s.params))
    root = resolve(params.data.root)
    if not root.is_dir():
        return {"skipped": f"{root} not found (run the download stage, or carry it)"}

    from bnr.cam.cam_model import load_cam_model
    from bnr.data.classes import class_names
    from bnr.data.voc import VocSegmentation
    from bnr.metrics import sweep_mious
    from bnr.steps.eval_seeds import sweep_thresholds
    from bnr.steps.infer_seeds import seed_options

    started = time.perf_counter()
    names = class_names(params.dataset)
    model = load_cam_model(ckpt, params.per_dataset.train_cam.model, params.dataset)
    model = model.to(device)
    dataset = VocSegmentation(root, params.data.seed_eval_split, names,
                              mask_dir=params.data.gt_dir)
    thresholds = sweep_thresholds(params)
    options = seed_options(params, model.cfg.patch_size)
    confs = {bf16: np.zeros((len(thresholds), len(names), len(names)), np.int64)
             for bf16 in (False, True)}
    count = 0
    for index in range(min(s.miou_images, len(dataset))):
        if count >= 1 and time.perf_counter() - started > seconds:
            break  # out of time: both precisions have seen the same images so far
        item = dataset[index]
        for bf16 in (False, True):
            confs[bf16] += seed_confusions(model, item, thresholds, len(names), options, device,
                                           bf16)
        count += 1
    scored = {bf16: sweep_mious(confs[bf16]) for bf16 in confs}  # (mIoUs, best index)
    fp32_best = scored[False][1]
    rows = [{"variant": "bfloat16" if bf16 else "float32",
             "best_miou": float(mious[best]) * 100,  # as eval_seeds reports it
             "best_threshold": float(thresholds[best]),
             "miou_at_fp32_threshold": float(mious[fp32_best]) * 100}
            for bf16, (mious, best) in scored.items()]
    diff_best = rows[1]["best_miou"] - rows[0]["best_miou"]
    diff_same = rows[1]["miou_at_fp32_threshold"] - rows[0]["miou_at_fp32_threshold"]
    met = abs(diff_best) <= TARGET_MIOU_POINTS and abs(diff_same) <= TARGET_MIOU_POINTS
    return {
        "columns": ["variant", "best_miou", "best_threshold", "miou_at_fp32_threshold"],
        "rows": rows,
        "images": count,
        "diff_points": diff_best,
        "diff_points_same_threshold": diff_same,
        "target_met": met,
        "notes": [
            f"{ckpt.relative_to(REPO) if ckpt.is_relative_to(REPO) else ckpt} "
            f"({params.per_dataset.train_cam.model}, dataset {params.dataset}), first {count} "
            f"image(s) of split {params.data.seed_eval_split}, scales "
            f"{list(options['scales'])}, resample {options['resample']}, "
            f"batch_passes {options['batch_passes']}, thresholds "
            f"{thresholds[0]:.2f}..{thresholds[-1]:.2f}",
            f"bfloat16 - float32: {diff_best:+.3f} points (best thresholds), {diff_same:+.3f} "
            f"at the float32 threshold (target within {TARGET_MIOU_POINTS}: "
            f"{met_text(met)})",
        ],
    }
