"""The ``bnr`` command: ``bnr predict`` labels images with a trained checkpoint;
``bnr compare-metrics`` checks a fresh run's metrics against committed ones (bnr.pipeline.compare);
``bnr experiments`` tables the DVC experiments (mean ± std over seeds per arm).

::

    bnr predict --checkpoint models/segmenter.pt [--scales 0.75 1.0 1.25] [--flip] \\
        [--device auto|cpu|cuda] [--precision auto|float32|bfloat16] INPUT... --out DIR
    bnr predict --checkpoint models/cam.pt --classes 1,3 --threshold 0.3 [--sizes 64 128] \\
        INPUT... --out DIR

INPUT: image files or folders (their .jpg/.jpeg/.png/.bmp files, sorted). For each image
``<name>.png`` (VOC palette labels) and ``<name>_overlay.png`` (labels blended over the image)
are written to DIR. The checkpoint kind is read from the file: a segmenter (train_segmenter)
gives a segmentation; a CAM network (train_cam) gives seed labels from the TransCAM multi-scale
CAMs of the given image-level ``--classes`` (1-based), background below ``--threshold``.
The network runs on ``--device`` (auto: CUDA when present) in ``--precision`` (auto: bfloat16
autocast on CUDA, float32 on CPU), as the ``runtime`` block of params.yaml does for the stages.
A user error (bad checkpoint, missing option) is one line and exit code 2. A bad image
(unreadable, or larger than ``--max-pixels``) is one ``error:`` line naming it; every other
image is still written, and the exit code is 2 at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bnr.config.params import RuntimeConfig
from bnr.errors import BnrError
from bnr.io import atomic_path, read_image, write_label_png
from bnr.pipeline.visualize import colorize_labels
from bnr.runtime import Runtime, start_runtime

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
EXIT_USER_ERROR = 2
MAX_PIXELS = 16_000_000  # 4000 x 4000 at scale 1: larger inputs need more memory than most hosts


def collect_inputs(inputs: Sequence[str]) -> list[Path]:
    """Image files of ``inputs`` (files as given, folders expanded); error if none / missing."""
    out: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            out += sorted(p for p in path.iterdir()
                          if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            out.append(path)
        else:
            raise BnrError(f"{path}: input not found")
    if not out:
        raise BnrError("no input images found in " + ", ".join(inputs))
    return out


def parse_classes(text: str | None, num_classes: int) -> list[int]:
    """``"1,3"`` -> [1, 3] (1-based foreground indices, each < ``num_classes``)."""
    if text is None:
        raise BnrError("a CAM checkpoint needs --classes (comma-separated 1-based class indices "
                       "present in the images) and --threshold (background threshold in [0, 1])")
    try:
        classes = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise BnrError(f"--classes must be comma-separated integers, got {text!r}") from None
    bad = [c for c in classes if not 0 < c < num_classes]
    if bad:
        raise BnrError(f"--classes: {bad[0]} is not a foreground class index "
                       f"(1..{num_classes - 1})")
    return classes


def load_any_checkpoint(path: Path) -> tuple[str, torch.nn.Module, dict]:
    """``(kind, model in eval mode, checkpoint)`` of a segmenter or CAM checkpoint: its ``meta``
    (read without its tensors) names the kind, whose loader loads the network (a CAM network
    through :func:`bnr.cam.cam_model.load_cam_model`)."""
    from bnr.checkpoints import load_checkpoint

    state = load_checkpoint(path, {}, mmap=True)
    meta = state["meta"]
    kind = meta.get("kind")
    if kind == "cam":
        from bnr.cam.cam_model import load_cam_model

        model = load_cam_model(path, str(meta.get("preset")), str(meta.get("dataset")))
    elif kind == "segmenter":
        from bnr.segmenter.segmenter_model import segmenter_from_checkpoint

        model = segmenter_from_checkpoint(path)
    else:
        raise BnrError(f"{path}: checkpoint kind {kind!r} cannot predict (need a segmenter or "
                       "CAM checkpoint)")
    return kind, model, state


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image with the (H, W) labels blended in their VOC colours (background
    pixels keep the image)."""
    colour = colorize_labels(label).astype(np.float32)
    blend = image.astype(np.float32) * (1 - alpha) + colour * alpha
    keep = (label == 0)[..., None]
    return np.where(keep, image, blend).astype(np.uint8)


def predict_runtime(args: argparse.Namespace) -> Runtime:
    """The :class:`Runtime` of ``--device`` / ``--precision`` (BnrError if CUDA is asked for
    and absent); torch's CPU threads set to the available cores as in the stages."""
    return start_runtime(RuntimeConfig(device=args.device, precision=args.precision))


def check_predict_args(args: argparse.Namespace) -> None:
    """Every option of ``bnr predict`` in range, before any work (one line naming it)."""
    if args.scales is not None and any(not 0 < s <= 8 for s in args.scales):
        raise BnrError(f"--scales must be resize factors in (0, 8], got {args.scales}")
    if args.sizes is not None and any(not 8 <= s <= 4096 for s in args.sizes):
        raise BnrError(f"--sizes must be side lengths in [8, 4096] pixels, got {args.sizes}")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise BnrError(f"--threshold must be a background threshold in [0, 1], "
                       f"got {args.threshold:g}")
    if args.max_pixels < 1:
        raise BnrError(f"--max-pixels must be a positive pixel count, got {args.max_pixels}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BnrError(f"{out}: --out must be a folder, but it is an existing file")


def predict(args: argparse.Namespace) -> int:
    from bnr.data.transforms import EvalTransform

    check_predict_args(args)
    images = collect_inputs(args.inputs)
    runtime = predict_runtime(args)
    kind, model, state = load_any_checkpoint(Path(args.checkpoint))
    model = runtime.prepare_model(model)
    out = Path(args.out)
    if kind == "cam":
        from bnr.cam.maps import cams_to_seeds, multiscale_cam

        num_classes = int(state["meta"]["num_classes"])
        classes = parse_classes(args.classes, num_classes)
        if args.threshold is None:
            raise BnrError("a CAM checkpoint needs --threshold (background threshold in [0, 1], "
                           "e.g. best_threshold of metrics/seeds.json)")
        recorded = (state.get("protocol") or {}).get("per_dataset", {})
        sizes = args.sizes or list(recorded.get("infer_seeds", {}).get("scales") or [256])
        multiple = getattr(getattr(model, "cfg", None), "patch_size", 16)
    zoom = max(args.scales) ** 2 if kind == "segmenter" else 1.0  # pixels the network sees
    failed = 0
    for path in images:
        try:  # a bad image is one line; the others are still written
            check_image_size(path, args.max_pixels, zoom)
            image = read_image(path)  # unreadable -> BnrError naming the file
            x, _ = EvalTransform()(image, None)  # (3, H, W)
            with torch.no_grad():
                if kind == "segmenter":
                    from bnr.segmenter.evaluation import multiscale_predict

                    probs = multiscale_predict(model, x, args.scales, args.flip,
                                               runtime=runtime)  # (S, H, W) CPU float32
                    label = probs.argmax(0).numpy().astype(np.uint8)
                else:
                    cams = multiscale_cam(model, image, classes, sizes, flip=args.flip,
                                          patch_multiple=multiple, resample="pil_bicubic",
                                          runtime=runtime)  # (K, H, W) CPU float32
                    label = cams_to_seeds(cams, classes, args.threshold)
        except (BnrError, MemoryError, torch.cuda.OutOfMemoryError) as exc:
            failed += 1
            what = str(exc) if isinstance(exc, BnrError) else f"{path}: out of memory"
            print(f"error: {' '.join(what.split())[:300]}", file=sys.stderr)
            continue
        out.mkdir(parents=True, exist_ok=True)
        write_label_png(out / f"{path.stem}.png", label)
        with atomic_path(out / f"{path.stem}_overlay.png") as tmp:
            Image.fromarray(overlay(image, label)).save(tmp, format="PNG")
        print(f"{path} -> {out / (path.stem + '.png')}")
    if failed:
        print(f"predicted {len(images) - failed} of {len(images)} images; {failed} failed "
              "(each named above)")
        return EXIT_USER_ERROR
    return 0


def check_image_size(path: Path, max_pixels: int, zoom: float = 1.0) -> None:
    """Refuse an image whose pixels (times ``zoom``, the largest scale squared) exceed
    ``max_pixels``, from its header, before it is decoded (one line naming the file)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
    except Image.DecompressionBombError as exc:
        raise BnrError(f"{path}: image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError):
        return  # read_image names the problem
    if width * height * zoom > max_pixels:
        scaled = " at the largest --scales" if zoom != 1.0 else ""
        raise BnrError(f"{path}: image is {width}x{height} ({width * height * zoom / 1e6:.1f} "
                       f"megapixels{scaled}), more than --max-pixels {max_pixels} (raise it "
                       "if the machine has the memory)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnr", description="bnr: BNR weakly supervised "
                                     "semantic segmentation tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="label images with a segmenter or CAM checkpoint",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="models/segmenter.pt or models/cam.pt")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--scales", nargs="+", type=float, default=[1.0],
                   help="segmenter: resize factors averaged (default 1.0)")
    p.add_argument("--flip", action="store_true", help="add horizontally flipped passes")
    p.add_argument("--classes", help="CAM: comma-separated 1-based classes in the images")
    p.add_argument("--threshold", type=float, help="CAM: background threshold in [0, 1]")
    p.add_argument("--sizes", nargs="+", type=int,
                   help="CAM: square side lengths (default: the checkpoint's infer_seeds.scales, "
                        "else 256)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the network runs (auto: cuda when present, else cpu)")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="autocast precision (auto: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"refuse larger images (pixels x largest scale squared; default "
                        f"{MAX_PIXELS})")
    p.set_defaults(func=predict)
    add_compare_parser(sub)
    add_experiments_parser(sub)
    return parser


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    from bnr.pipeline import compare

    p = sub.add_parser("compare-metrics", help="compare metrics/*.json with committed ones",
                       description=compare.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", default="HEAD",
                   help="git revision (default HEAD) or a folder of metrics JSON files")
    p.add_argument("--metrics", default="metrics", help="the fresh run's folder (metrics)")
    p.add_argument("--tolerances", default=str(compare.TOLERANCES_FILE),
                   help="the per-figure tolerance file (default: bnr/pipeline/tolerances.yaml)")
    p.add_argument("--tolerance", type=float, help="mIoU points for every mIoU figure")
    p.add_argument("--threshold-tolerance", type=float,
                   help="background thresholds, absolute, for every threshold")
    p.add_argument("--rel-tolerance", type=float,
                   help="losses and other floats, relative, for every such figure")
    p.set_defaults(func=lambda args: compare.run_compare(
        args.against, Path(args.metrics), compare.with_overrides(
            compare.load_tolerances(Path(args.tolerances)), args.tolerance,
            args.threshold_tolerance, args.rel_tolerance)))


def add_experiments_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiments", help="compare the DVC experiments (mean ± std per arm)",
                       description="The experiments of `dvc exp show`: mIoU per arm (runs that "
                       "differ only in `seed`) as mean ± std over seeds, then each experiment. "
                       "Outside the pipeline: DVC cannot see experiments as a stage input.")
    p.add_argument("--out", default="", help="also write the markdown here (e.g. "
                   "metrics/experiments.md)")
    p.set_defaults(func=run_experiments)


def run_experiments(args: argparse.Namespace) -> int:
    from bnr.io import write_text
    from bnr.pipeline.report_experiments import dvc_experiments, experiments_section

    exp_json, note = dvc_experiments()
    text = "\n".join(["# bnr experiments", "", *experiments_section(exp_json, note)]) + "\n"
    if args.out:
        write_text(args.out, text)
    print(text, end="")
    return 1 if note else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bnr`` console script; returns (and exits with) the exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except BnrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_USER_ERROR
    if argv is None:
        sys.exit(code)
    return code
