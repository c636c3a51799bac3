"""One prepared GPU check of the paper-sized workloads, under 5 minutes on one H100.

Sections (each guarded: a failure prints its error and the others still run):

1. ``train_cam`` throughput: Conformer ``conformer_s``, 512x512, batch 8, 21 classes, the
   library's training step (``bnr.cam.training.cam_training_step``: forward under autocast,
   ``total_loss(..., "bnr", 1.0, depth)`` in float32; backward; ``cam_optimizer``'s AdamW) on
   random images and labels made on the device; float32 vs bfloat16 autocast + channels_last;
   images/s and peak ``torch.cuda.max_memory_allocated``.
2. Seed inference: ``bnr.cam.seeds.item_seed_cams`` (infer_seeds' CAMs of one image) at the
   paper's scales 256/512/768 (square, params.yaml's ``infer_seeds.resample``) with flip on random
   375x500 uint8 images; float32 one pass at a time (``batch_passes=False``) vs flips batched in
   bfloat16; target >= 2x.
3. Seed mIoU (optional): the pipeline's ``models/cam.pt`` (``load_cam_model``) on the first N
   images of the seed evaluation split, float32 vs bfloat16, the CAMs made as infer_seeds makes
   them (its options from ``--params``) and scored as eval_seeds scores them; target: within
   0.1 point. Skipped (with the reason) when the checkpoint or the dataset is missing.
4. Random walk: AffinityNet (``resnet38d``) affinities + sparse walk (beta 14, logt 7, radius 5,
   background + 20 classes) on a 375x500 and a 512x512 image, seconds per image.
5. Projection: 22 epochs x 10,582 images of VOC ``train_cam`` at the measured images/s; target:
   under 1 hour in bfloat16.

``--smoke`` uses the tiny presets and small sizes so that ``--device cpu --smoke`` runs on a CPU
in seconds (tests/test_gpu_check.py); on CPU the bfloat16 variants use CPU autocast and no peak
memory is measured. Timed iterations exclude warm-up and are bracketed by device syncs; the
number of timed iterations shrinks to fit ``--budget`` seconds (counted from process start).

Sections 1-3 are in ``bench/gpu_check_cam.py``, 4-5 in ``bench/gpu_check_walk.py``, the shared
settings and timing helpers in ``bench/gpu_check_common.py``.

Run: ``bash bench/gpu_check.sh`` (``--help`` for the options). The table goes to stdout, the same
data as JSON to ``--json`` (default ``$OUT/gpu_check.json`` when ``OUT`` is set, else
``bench/gpu_check.json``).
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # the budget counts from here, so imports and CUDA start-up count too

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gpu_check_cam import section_infer, section_miou, section_train  # noqa: E402
from bench.gpu_check_common import (  # noqa: E402
    SECTIONS,
    VOC_TRAIN_AUG_IMAGES,
    Clock,
    Settings,
    free_memory,
)
from bench.gpu_check_walk import section_projection, section_rw  # noqa: E402

# The paper's VOC configuration (params.yaml datasets.voc2012, train_cam, infer_seeds), used when
# params.yaml can't be read.
PAPER_FALLBACK = {"epochs": 22, "batch_size": 8, "crop_size": 512, "lr": 5e-5,
                  "weight_decay": 5e-4, "adam_eps": 1e-8, "infer_scales": [256, 512, 768],
                  "resample": "pil_bicubic", "model": "conformer_s"}
TITLES = {
    "train": "1. train_cam training throughput",
    "infer": "2. Seed inference throughput",
    "miou": "3. Seed mIoU, float32 vs bfloat16",
    "rw": "4. Random walk (AffinityNet + sparse walk) per image",
    "projection": "5. Projected VOC train_cam wall time",
}


def paper_config() -> tuple[dict, str]:
    """The voc2012 block of params.yaml with the shared train_cam / infer_seeds keys the check
    uses (its source named), else the built-in copy."""
    try:
        import yaml

        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        block = raw["datasets"]["voc2012"]
        cam = block["train_cam"]
        keys = ("epochs", "batch_size", "crop_size", "model", "lr", "weight_decay")
        return ({**{k: cam[k] for k in keys}, "adam_eps": raw["train_cam"]["adam_eps"],
                 "infer_scales": block["infer_seeds"]["scales"],
                 "resample": raw["infer_seeds"]["resample"]},
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
        train_lr=float(paper["lr"]),
        train_weight_decay=float(paper["weight_decay"]),
        train_adam_eps=float(paper["adam_eps"]),
        infer_preset="conformer_tiny" if smoke else paper["model"],
        infer_hw=(40, 48) if smoke else (375, 500),
        infer_scales=(32, 64) if smoke else tuple(int(v) for v in paper["infer_scales"]),
        infer_images=1 if smoke else 4,
        infer_rounds=1 if smoke else 5,
        infer_classes=(1, 15),  # two present classes, typical of a VOC image
        infer_resample=str(paper["resample"]),  # the pipeline's (infer_seeds.resample)
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
# Output


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
    clock = Clock(T0, s.budget_s)
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
