"""One prepared GPU check of the paper-sized workloads, under 5 minutes on one H100.

Sections (each guarded: a failure prints its error and the others still run):

1. ``train_cam`` throughput: Conformer ``conformer_s``, 512x512, batch 8, 21 classes, the real
   training step (forward, ``bnr.cam.losses.total_loss(..., "bnr", 1.0, depth)``, backward, AdamW)
   on random images and labels made on the device; float32 vs bfloat16 autocast +
   channels_last; images/s and peak ``torch.cuda.max_memory_allocated``.
2. Seed inference: ``bnr.cam.maps.multiscale_cam`` at the paper's scales 256/512/768 (square) with
   flip on random 375x500 images; float32 one pass at a time (``batch_passes=False``) vs flips
   batched in bfloat16; target >= 2x.
3. Seed mIoU (optional): the pipeline's ``models/cam.pt`` on the first N images of the seed
   evaluation split, float32 vs bfloat16, scored like ``stages/eval_seeds.py``; target: within
   0.1 point. Skipped (with the reason) when the checkpoint or the dataset is missing.
4. Random walk: AffinityNet (``resnet38d``) affinities + sparse walk (beta 14, logt 7, radius 5,
   background + 20 classes) on a 375x500 and a 512x512 image, seconds per image.
5. Projection: 22 epochs x 10,582 images of VOC ``train_cam`` at the measured images/s; target:
   under 1 hour in bfloat16.

``--smoke`` uses the tiny presets and small sizes so that ``--device cpu --smoke`` runs on a CPU
in seconds (tests/test_gpu_check.py); on CPU the bfloat16 variants use CPU autocast and no peak
memory is measured. Timed iterations exclude warm-up and are bracketed by device syncs; the
number of timed iterations shrinks to fit ``--budget`` seconds (counted from process start).

Run: ``bash bench/gpu_check.sh`` (``--help`` for the options). The table goes to stdout, the same
data as JSON to ``--json`` (default ``$OUT/gpu_check.json`` when ``OUT`` is set, else
``bench/gpu_check.json``).
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # the budget counts from here, so imports and CUDA start-up count too

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The paper's VOC configuration (params.yaml datasets.voc2012), used when that block can't be read.
PAPER_FALLBACK = {"epochs": 22, "batch_size": 8, "crop_size": 512,
                  "infer_scales": [256, 512, 768], "model": "conformer_s"}
VOC_TRAIN_AUG_IMAGES = 10_582  # SBD-augmented train_aug split (paper 4.1)
TARGET_TRAIN_HOURS = 1.0
TARGET_INFER_SPEEDUP = 2.0
TARGET_MIOU_POINTS = 0.1
NUM_CLASSES = 21  # VOC: background + 20
SECTIONS = ("train", "infer", "miou", "rw", "projection")
TITLES = {
    "train": "1. train_cam training throughput",
    "infer": "2. Seed inference throughput",
    "miou": "3. Seed mIoU, float32 vs bfloat16",
    "rw": "4. Random walk (AffinityNet + sparse walk) per image",
    "projection": "5. Projected VOC train_cam wall time",
}
# Share of the time left that each measuring section may use (projection only computes).
WEIGHTS = {"train": 0.40, "infer": 0.25, "miou": 0.15, "rw": 0.20, "projection": 0.0}


@dataclass
class Settings:
    """Sizes of one run (GPU defaults; ``--smoke`` replaces them with tiny ones)."""

    device: str
    smoke: bool
    budget_s: float
    train_preset: str
    train_size: int
    train_batch: int
    train_warmup: int
    train_iters: int
    infer_preset: str
    infer_hw: tuple[int, int]
    infer_scales: tuple[int, ...]
    infer_images: int
    infer_rounds: int
    infer_classes: tuple[int, ...]
    miou_images: int
    params: str
    checkpoint: str
    rw_preset: str
    rw_sizes: tuple[tuple[int, int], ...]
    rw_repeats: int
    rw_beta: float
    rw_logt: int
    rw_radius: int
    rw_bg_score: float
    epochs: int
    train_images: int


def paper_config() -> tuple[dict, str]:
    """The voc2012 block of params.yaml (its source named), else the built-in copy."""
    try:
        import yaml

        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        block = raw["datasets"]["voc2012"]
        cam = block["train_cam"]
        return ({**{k: cam[k] for k in ("epochs", "batch_size", "crop_size", "model")},
                 "infer_scales": block["infer_seeds"]["scales"]},
                "params.yaml datasets.voc2012")
    except Exception as exc:  # noqa: BLE001 - params.yaml may be mid-edit; the paper is fixed
        return dict(PAPER_FALLBACK), f"built-in (params.yaml unreadable: {exc})"


def parse_size(text: str) -> tuple[int, int]:
    """``375x500`` -> (375, 500) (height x width)."""
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def default_json_path() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "gpu_check.json" if out else REPO / "bench" / "gpu_check.json"


def build_settings(args: argparse.Namespace) -> tuple[Settings, str]:
    paper, source = paper_config()
    smoke = args.smoke
    s = Settings(
        device=args.device,
        smoke=smoke,
        budget_s=args.budget,
        train_preset="conformer_tiny" if smoke else paper["model"],
        train_size=64 if smoke else int(paper["crop_size"]),
        train_batch=2 if smoke else int(paper["batch_size"]),
        train_warmup=0 if smoke else 3,  # smoke: the untimed sizing step is the warm-up
        train_iters=2 if smoke else 20,
        infer_preset="conformer_tiny" if smoke else paper["model"],
        infer_hw=(40, 48) if smoke else (375, 500),
        infer_scales=(32, 64) if smoke else tuple(int(v) for v in paper["infer_scales"]),
        infer_images=1 if smoke else 4,
        infer_rounds=1 if smoke else 5,
        infer_classes=(1, 15),  # two present classes, typical of a VOC image
        miou_images=2 if smoke else 100,
        params=args.params,
        checkpoint=args.checkpoint,
        rw_preset="resnet38d_tiny" if smoke else "resnet38d",
        rw_sizes=((60, 80), (72, 72)) if smoke else ((375, 500), (512, 512)),
        rw_repeats=1 if smoke else 5,
        rw_beta=14.0,
        rw_logt=7,
        rw_radius=5,
        rw_bg_score=0.42,
        epochs=int(paper["epochs"]),
        train_images=VOC_TRAIN_AUG_IMAGES,
    )
    for name in ("train_iters", "infer_rounds", "miou_images", "rw_repeats"):
        value = getattr(args, name)
        if value is not None:
            setattr(s, name, value)
    if args.rw_sizes:
        s.rw_sizes = tuple(parse_size(x) for x in args.rw_sizes.split(",") if x.strip())
    return s, source


# ----------------------------------------------------------------------------------------------
# Timing helpers


class Clock:
    """The global deadline and the share of it each section may use."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = T0 + budget_s

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def share(self, section: str, remaining: Sequence[str]) -> float:
        total = sum(WEIGHTS[r] for r in remaining) or 1.0
        return max(0.0, self.left()) * WEIGHTS[section] / total


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_loop(
    step: Callable[[], Any], device: torch.device, warmup: int, max_iters: int, deadline: float,
    min_iters: int = 1,
) -> tuple[int, float]:
    """(timed iterations, seconds) of ``step`` after ``warmup`` untimed calls.

    One more untimed call measures a step, so that the timed calls end by ``deadline`` (a
    ``time.perf_counter()`` value), within ``min_iters`` .. ``max_iters`` calls.
    """
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    probe = time.perf_counter() - t0
    n = max(min_iters, min(max_iters, int((deadline - time.perf_counter()) / max(probe, 1e-6))))
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return n, time.perf_counter() - t0


def split_deadline(end: float, parts_left: int) -> float:
    """The deadline of the next of ``parts_left`` equal parts of the time until ``end``."""
    now = time.perf_counter()
    return now + max(0.0, end - now) / max(1, parts_left)


def autocast(device: torch.device, bf16: bool) -> Any:
    """bfloat16 autocast on the device's type (CPU autocast on CPU), or a no-op."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def free_memory(device: torch.device) -> None:
    """Drop cached blocks and reset the peak, so the next variant's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None  # torch's allocator statistics exist for CUDA only
    return torch.cuda.max_memory_allocated(device) / 2**20


# ----------------------------------------------------------------------------------------------
# 1. train_cam throughput


def train_variant(s: Settings, device: torch.device, bf16: bool, deadline: float) -> dict:
    """Images/s and peak memory of the train_cam step (as bnr.cam.training.train_cam runs it)."""
    from bnr.cam.losses import total_loss
    from bnr.models.conformer import create_conformer

    free_memory(device)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: conformer_s init on CPU takes seconds
        model = create_conformer(s.train_preset, num_classes=NUM_CLASSES)
    if bf16:  # channels_last helps the CNN branch's convolutions on tensor cores
        model = model.to(memory_format=torch.channels_last)
    model.train()
    no_decay = model.no_weight_decay()
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in model.named_parameters() if n not in no_decay]},
         {"params": [p for n, p in model.named_parameters() if n in no_decay],
          "weight_decay": 0.0}],
        lr=5e-5, weight_decay=5e-4,
    )
    b, size = s.train_batch, s.train_size
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(b, 3, size, size, device=device, generator=gen)
    if bf16:
        x = x.contiguous(memory_format=torch.channels_last)
    labels = (torch.rand(b, NUM_CLASSES, device=device, generator=gen) < 0.1).float()
    labels[:, 0] = 1.0  # background channel set, as labels_to_multihot does
    labels[torch.arange(b, device=device),
           torch.randint(1, NUM_CLASSES, (b,), device=device, generator=gen)] = 1.0
    last: dict[str, float] = {}

    def step() -> None:
        with autocast(device, bf16):
            outputs = model(x)
            loss, parts = total_loss(outputs, labels, "bnr", 1.0, model.cfg.depth)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        last.update(parts)  # Python floats: total_loss syncs once per step, as training does

    n, elapsed = timed_loop(step, device, s.train_warmup, s.train_iters, deadline, min_iters=2)
    result = {
        "variant": "bfloat16 autocast + channels_last" if bf16 else "float32",
        "images_per_s": n * b / elapsed,
        "step_s": elapsed / n,
        "timed_iters": n,
        "peak_mib": peak_mib(device),
        "last_loss": last.get("loss", float("nan")),
    }
    return result  # the caller frees this variant's memory before the next one


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
        f"{NUM_CLASSES} classes, method bnr (L_cls + L_M**, noise_scale 1), AdamW; "
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


def seed_cams(
    model: torch.nn.Module, image: torch.Tensor, classes: Sequence[int], scales: Sequence[int],
    device: torch.device, bf16: bool, batch_passes: bool, patch_multiple: int,
    flip: bool = True, resize: str = "square", source: str = "transcam",
) -> torch.Tensor:
    """``multiscale_cam`` of one CPU (3, H, W) image on ``device`` in float32 or bfloat16
    autocast (a ``bnr.runtime.Runtime``, as the infer_seeds stage runs it); (K, H, W) CPU
    float32."""
    from bnr.cam.maps import multiscale_cam
    from bnr.runtime import Runtime

    runtime = Runtime(device, "bfloat16" if bf16 else "float32")
    cams = multiscale_cam(model, image, classes, scales, flip=flip, resize=resize,
                          batch_passes=batch_passes, patch_multiple=patch_multiple,
                          source=source, runtime=runtime)
    return cams.float().cpu()  # the stage saves CAMs from the CPU


def section_infer(s: Settings, device: torch.device, seconds: float) -> dict:
    from bnr.models.conformer import create_conformer

    torch.manual_seed(0)
    with torch.device(device):
        model = create_conformer(s.infer_preset, num_classes=NUM_CLASSES).eval()
    patch = model.cfg.patch_size
    gen = torch.Generator().manual_seed(0)
    h, w = s.infer_hw
    images = [torch.randn(3, h, w, generator=gen) for _ in range(s.infer_images)]  # CPU, as read
    variants = [  # (label, bfloat16, batch_passes)
        ("float32, one pass at a time (batch_passes=False)", False, False),
        ("float32, flips batched (batch_passes=True)", False, True),
        ("bfloat16 autocast, flips batched (batch_passes=True)", True, True),
    ]
    end = time.perf_counter() + seconds
    rows = []
    maps: dict[bool, torch.Tensor] = {}
    for i, (label, bf16, batched) in enumerate(variants):
        free_memory(device)

        def one_round(bf16: bool = bf16, batched: bool = batched,
                      model: torch.nn.Module = model) -> None:
            for img in images:
                seed_cams(model, img, s.infer_classes, s.infer_scales, device, bf16, batched,
                          patch)

        n, elapsed = timed_loop(one_round, device, 1, s.infer_rounds,
                                split_deadline(end, len(variants) - i))
        rows.append({"variant": label, "images_per_s": n * len(images) / elapsed,
                     "s_per_image": elapsed / (n * len(images)), "timed_images": n * len(images),
                     "peak_mib": peak_mib(device)})
        if batched:  # all classes: with random weights a given class's map may be all zero
            maps[bf16] = seed_cams(model, images[0], range(1, NUM_CLASSES), s.infer_scales,
                                   device, bf16, batched, patch)
    base, target = rows[0], rows[-1]
    ratio = target["images_per_s"] / base["images_per_s"]
    diff = float((maps[True] - maps[False]).abs().max())
    return {
        "columns": ["variant", "images_per_s", "s_per_image", "timed_images", "peak_mib"],
        "rows": rows,
        "speedup": ratio,
        "target_met": ratio >= TARGET_INFER_SPEEDUP,
        "max_abs_diff_bf16_vs_fp32": diff,
        "notes": [
            f"{s.infer_preset} (random init), {h}x{w} random images, scales "
            f"{'/'.join(map(str, s.infer_scales))} square + flip, classes "
            f"{list(s.infer_classes)}, CAMs back on the CPU",
            f"bfloat16 batched / float32 one at a time: {ratio:.2f}x (target >= "
            f"{TARGET_INFER_SPEEDUP:.0f}x: {met_text(ratio >= TARGET_INFER_SPEEDUP)})",
            f"seed maps bfloat16 vs float32 (batched, first image, all 20 classes): max |diff| "
            f"{diff:.2e} (random weights: a sanity check only; section 3 uses trained ones)",
        ],
    }


def section_miou(s: Settings, device: torch.device, seconds: float) -> dict:
    """Seed mIoU of the pipeline's checkpoint on the first images, float32 vs bfloat16."""
    ckpt = Path(s.checkpoint)
    ckpt = ckpt if ckpt.is_absolute() else REPO / ckpt
    if not ckpt.is_file():
        return {"skipped": f"{ckpt} not found (run the pipeline up to train_cam, or carry it)"}
    from bnr.config.params import load_params

    params_path = Path(s.params)
    params = load_params(params_path if params_path.is_absolute() else REPO / params_path)
    root = Path(params.data.root)
    root = root if root.is_absolute() else REPO / root
    if not root.is_dir():
        return {"skipped": f"{root} not found (run the download stage, or carry it)"}

    from bnr.cam.cam_model import build_cam_model, cam_model_meta
    from bnr.cam.seeds import threshold_confusions, threshold_grid
    from bnr.checkpoints import load_checkpoint, load_state_strict
    from bnr.data.classes import class_names
    from bnr.data.transforms import EvalTransform
    from bnr.data.voc import VocSegmentation
    from bnr.metrics import mean_iou

    started = time.perf_counter()
    names = class_names(params.dataset)
    sizes = params.per_dataset.train_cam
    state = load_checkpoint(ckpt, cam_model_meta(sizes.model, params.dataset))
    model = build_cam_model(sizes.model, params.dataset, sizes.init)
    load_state_strict(model, state["model"], ckpt)
    model = model.to(device).eval()
    dataset = VocSegmentation(root, params.data.seed_eval_split, names,
                              mask_dir=params.data.gt_dir)
    ev, inf = params.per_dataset.eval_seeds, params.infer_seeds
    thresholds = threshold_grid(ev.threshold_start, ev.threshold_stop, ev.threshold_step)
    confs = {bf16: np.zeros((len(thresholds), len(names), len(names)), np.int64)
             for bf16 in (False, True)}
    to_tensor = EvalTransform()
    count = 0
    for index in range(min(s.miou_images, len(dataset))):
        if count >= 1 and time.perf_counter() - started > seconds:
            break  # out of time: both precisions have seen the same images so far
        item = dataset[index]
        image, _ = to_tensor(item["image"], None)
        classes = [int(c) for c in torch.nonzero(item["labels"][1:]).flatten() + 1]
        for bf16 in (False, True):
            scales = params.per_dataset.infer_seeds.scales
            cams = seed_cams(model, image, classes, scales, device, bf16,
                             inf.batch_passes, model.cfg.patch_size, flip=inf.flip,
                             resize=inf.resize, source=inf.source)
            cams_np = cams.numpy().astype(np.float16).astype(np.float32)  # as saved, as loaded
            confs[bf16] += threshold_confusions(cams_np, np.asarray(classes, np.int64),
                                                item["mask"], thresholds, len(names))
        count += 1
    mious = {bf16: np.array([mean_iou(c) for c in confs[bf16]]) * 100 for bf16 in confs}
    best = {bf16: int(np.nanargmax(mious[bf16])) for bf16 in mious}
    rows = [{"variant": "bfloat16" if bf16 else "float32",
             "best_miou": float(mious[bf16][best[bf16]]),
             "best_threshold": float(thresholds[best[bf16]]),
             "miou_at_fp32_threshold": float(mious[bf16][best[False]])} for bf16 in (False, True)]
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
            f"{list(params.per_dataset.infer_seeds.scales)}, "
            f"batch_passes {inf.batch_passes}, thresholds "
            f"{thresholds[0]:.2f}..{thresholds[-1]:.2f}",
            f"bfloat16 - float32: {diff_best:+.3f} points (best thresholds), {diff_same:+.3f} "
            f"at the float32 threshold (target within {TARGET_MIOU_POINTS}: "
            f"{met_text(met)})",
        ],
    }


# ----------------------------------------------------------------------------------------------
# 4. random walk


def section_rw(s: Settings, device: torch.device, seconds: float) -> dict:
    """AffinityNet forward + the library's sparse walk (``random_walk_segmentation``, float64,
    on the device its affinities are on, as the random_walk stage runs it) per image. Rows: the
    walk on the GPU after a float32 / bfloat16 forward, and the walk on the CPU after a
    bfloat16 forward (for comparison).
    """
    from bnr.affinity.affinity_model import STRIDE, build_affinity_model
    from bnr.affinity.random_walk import random_walk_segmentation
    from bnr.affinity.walk import padded_size
    from bnr.data.transforms import EvalTransform

    torch.manual_seed(0)
    with torch.device(device):
        model = build_affinity_model(s.rw_preset).eval()
    rng = np.random.default_rng(0)
    keys = list(range(1, NUM_CLASSES))  # every foreground class: the worst case per image
    to_tensor = EvalTransform()
    rows = []
    cpu = torch.device("cpu")
    # (size, bfloat16 forward, walk device); on a CPU run the last variant repeats the second
    jobs = [(hw, bf16, walk) for hw in s.rw_sizes
            for bf16, walk in ((False, device), (True, device), (True, cpu))]
    end = time.perf_counter() + seconds
    for i, ((h, w), bf16, walk_device) in enumerate(jobs):
        free_memory(device)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cams = torch.from_numpy(rng.random((len(keys), h, w), dtype=np.float32))
        ids = torch.tensor([0, *keys], dtype=torch.uint8)
        times = {"forward": 0.0, "walk": 0.0}

        def one(record: bool, image: np.ndarray = image, cams: torch.Tensor = cams,
                h: int = h, w: int = w, bf16: bool = bf16, ids: torch.Tensor = ids,
                times: dict = times, model: torch.nn.Module = model,
                walk_device: torch.device = walk_device) -> np.ndarray:
            t0 = time.perf_counter()
            x, _ = to_tensor(image, None)
            hp, wp = padded_size(h, w)
            x = torch.nn.functional.pad(x, (0, wp - w, 0, hp - h)).to(device)
            with torch.no_grad(), autocast(device, bf16):
                aff, src, dst = model.affinity(x[None], s.rw_radius)
            aff = aff[0].double()  # the stage's walk: float64 (aff is raised to the 14th power)
            sync(device)
            t1 = time.perf_counter()
            aff, src, dst = aff.to(walk_device), src.to(walk_device), dst.to(walk_device)
            label = random_walk_segmentation(
                cams, keys, aff, src, dst, beta=s.rw_beta, logt=s.rw_logt,
                bg_score=s.rw_bg_score, method="sparse", stride=STRIDE)[:h, :w]
            sync(device)
            if record:
                times["forward"] += t1 - t0
                times["walk"] += time.perf_counter() - t1
            return label

        deadline = split_deadline(end, len(jobs) - i)
        one(False)  # warm-up (cuSPARSE / cuDNN handles, allocator)
        n = 0
        while n < s.rw_repeats and (n == 0 or time.perf_counter() < deadline):
            label = one(True)
            n += 1
        if label.shape != (h, w):
            raise RuntimeError(f"random walk labels {label.shape} for a {h}x{w} image")
        rows.append({
            "image": f"{h}x{w}",
            "affinity_forward": "bfloat16 autocast" if bf16 else "float32",
            "walk_on": walk_device.type,
            "s_per_image": (times["forward"] + times["walk"]) / n,
            "forward_s": times["forward"] / n,
            "walk_s": times["walk"] / n,
            "timed_images": n,
            "peak_mib": peak_mib(device),
        })
    return {
        "columns": ["image", "affinity_forward", "walk_on", "s_per_image", "forward_s", "walk_s",
                    "timed_images", "peak_mib"],
        "rows": rows,
        "notes": [
            f"AffinityNet {s.rw_preset} (random init), radius {s.rw_radius}, beta {s.rw_beta:g}, "
            f"logt {s.rw_logt} ({2 ** s.rw_logt} sparse steps), background + {len(keys)} "
            f"classes, walk in float32 (one CPU thread on the CPU, as the library sets it); "
            "forward_s includes normalising and uploading the image, walk_s moving the "
            "affinities to the walk's device and the labels back",
        ],
    }


# ----------------------------------------------------------------------------------------------
# 5. projection


def section_projection(s: Settings, train: dict | None) -> dict:
    if not train or "rows" not in train:
        raise RuntimeError("no train_cam throughput (section 1 did not run or failed)")
    images = s.epochs * s.train_images
    rows = [{"variant": r["variant"], "images_per_s": r["images_per_s"],
             "hours": images / r["images_per_s"] / 3600}
            for r in train["rows"] if "images_per_s" in r]
    bf16 = [r for r in rows if r["variant"].startswith("bfloat16")]
    if not bf16:
        raise RuntimeError("no bfloat16 train_cam throughput (section 1's bf16 variant failed)")
    bf16_hours = bf16[0]["hours"]
    met = bf16_hours < TARGET_TRAIN_HOURS
    return {
        "columns": ["variant", "images_per_s", "hours"],
        "rows": rows,
        "hours_bf16": bf16_hours,
        "target_met": met,
        "notes": [
            f"{s.epochs} epochs x {s.train_images:,} images = {images:,} images at the measured "
            f"{s.train_preset} {s.train_size}x{s.train_size} batch-{s.train_batch} rate "
            "(step only: no data loading, no checkpointing)"
            + (" -- smoke sizes, not the paper's" if s.smoke else ""),
            f"bfloat16: {bf16_hours:.2f} h (target under {TARGET_TRAIN_HOURS:g} h: "
            f"{met_text(met)})",
        ],
    }


# ----------------------------------------------------------------------------------------------
# Output


def met_text(met: bool) -> str:
    return "met" if met else "NOT met"


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0 or abs(value) >= 100:
            return f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def markdown(section: str, result: dict) -> str:
    lines = [f"### {TITLES[section]}", ""]
    if "error" in result:
        return "\n".join([*lines, f"ERROR: {result['error']}", ""])
    if "skipped" in result:
        return "\n".join([*lines, f"skipped: {result['skipped']}", ""])
    cols = result["columns"]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for row in result["rows"]:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in cols) + " |")
    lines.append("")
    lines += [f"- {n}" for n in result.get("notes", [])]
    lines.append(f"- section time {result['seconds']:.1f} s")
    return "\n".join([*lines, ""])


def header(s: Settings, device: torch.device, paper_source: str) -> dict:
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    else:
        gpu = f"none (CPU run: {platform.processor() or platform.machine()}, " \
              f"{torch.get_num_threads()} threads)"
    return {
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "device": str(device),
        "smoke": s.smoke,
        "budget_s": s.budget_s,
        "paper_config": paper_source,
    }


def write_json(path: Path, head: dict, s: Settings, results: dict) -> float:
    """Write the results so far (total seconds included, which it returns)."""
    total = time.perf_counter() - T0
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"header": head, "settings": asdict(s), "sections": results, "total_s": total}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return total


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda (default when present) or cpu")
    p.add_argument("--smoke", action="store_true",
                   help="tiny presets and sizes, 1-2 iterations (checks that the script works)")
    p.add_argument("--budget", type=float, default=270.0,
                   help="seconds for the whole run, from process start (default 270)")
    p.add_argument("--json", type=Path, default=None,
                   help="JSON output (default $OUT/gpu_check.json if OUT is set, else "
                        "bench/gpu_check.json)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--params", default="params.yaml", help="params file for the seed mIoU check")
    p.add_argument("--checkpoint", default="models/cam.pt", help="CAM checkpoint (seed mIoU)")
    p.add_argument("--train-iters", type=int, default=None, help="max timed training steps")
    p.add_argument("--infer-rounds", type=int, default=None, help="max timed inference rounds")
    p.add_argument("--miou-images", type=int, default=None, help="images of the seed mIoU check")
    p.add_argument("--rw-repeats", type=int, default=None, help="max timed random-walk images")
    p.add_argument("--rw-sizes", default=None,
                   help="random-walk image sizes HxW, comma-separated (default 375x500,512x512)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected sections, print the tables, write the JSON; 1 if anything failed."""
    args = parse_args(argv)
    chosen = [x.strip() for x in args.sections.split(",") if x.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    s, paper_source = build_settings(args)
    device = torch.device(s.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device (use --device cpu --smoke)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    threads = torch.get_num_threads()
    if s.smoke and device.type == "cpu":
        # tiny ops on shared cores: OpenMP barriers made them ~100x slower with 2 threads here
        torch.set_num_threads(1)
    try:
        return run_sections(s, device, paper_source, chosen, args.json or default_json_path())
    finally:
        torch.set_num_threads(threads)  # main() may run in-process (tests)


def run_sections(
    s: Settings, device: torch.device, paper_source: str, chosen: Sequence[str], out: Path
) -> int:
    clock = Clock(s.budget_s)
    head = header(s, device, paper_source)
    print(f"# GPU check ({'smoke, ' if s.smoke else ''}{head['device']})\n")
    for key in ("gpu", "torch", "cuda", "cudnn", "tf32_matmul", "tf32_cudnn", "date", "python",
                "budget_s", "paper_config"):
        print(f"- {key}: {head[key]}")
    if s.smoke:
        print("- SMOKE RUN: tiny presets and sizes; its timings and met/NOT met say nothing")
    print(flush=True)

    results: dict[str, dict] = {}
    order = [x for x in SECTIONS if x in chosen]
    for i, name in enumerate(order):
        remaining = order[i:]
        seconds = clock.share(name, remaining)
        started = time.perf_counter()
        try:
            free_memory(device)  # the previous section's tensors are gone: start from zero
            if name != "projection" and clock.left() < 5:
                result = {"skipped": f"time budget spent ({clock.left():.0f} s left of "
                                     f"{s.budget_s:.0f} s)"}
            elif name == "train":
                result = section_train(s, device, seconds)
            elif name == "infer":
                result = section_infer(s, device, seconds)
            elif name == "miou":
                result = section_miou(s, device, seconds)
            elif name == "rw":
                result = section_rw(s, device, seconds)
            else:
                result = section_projection(s, results.get("train"))
        except Exception as exc:  # noqa: BLE001 - report and go on with the other sections
            traceback.print_exc(limit=4, file=sys.stderr)
            result = {"error": f"{type(exc).__name__}: {exc}".strip()[:2000]}
            try:
                free_memory(device)
            except Exception:  # noqa: BLE001 - a broken CUDA context must not hide the report
                pass
        result["status"] = (
            "error" if "error" in result else "skipped" if "skipped" in result
            else "partial" if any("error" in r for r in result.get("rows", [])) else "ok"
        )
        result["seconds"] = time.perf_counter() - started
        results[name] = result
        print(markdown(name, result), flush=True)
        write_json(out, head, s, results)  # after every section: a killed run keeps its part

    total = write_json(out, head, s, results)
    print(f"total {total:.1f} s (budget {s.budget_s:.0f} s)")
    print(f"wrote {out}")
    return 1 if any(r["status"] in ("error", "partial") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
