"""Training loops with per-epoch checkpoints, exact resume, dvclive curves and progress bars.

Resume checkpoints live in ``runs/<stage>/<key>/last.pt``, outside every DVC output (DVC deletes
a stage's outputs before re-running it). ``key`` hashes the params, the dataset split and the
library source, so a checkpoint is only resumed by the identical run. Each epoch reseeds torch
from ``(seed, epoch)`` and the shuffle order comes from its own generator, so an interrupted run
that resumes ends with the same weights as one that was not interrupted (on CPU).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from bnr.config import Params
from bnr.data.classes import class_names
from bnr.data.transforms import TrainTransform
from bnr.data.voc import VocSegmentation
from bnr.errors import BnrError
from bnr.io import atomic_path
from bnr.losses import total_loss
from bnr.models.conformer import create_conformer, load_pretrained

PACKAGE_DIR = Path(__file__).resolve().parent


def source_digest() -> str:
    """sha256 of the library's source files (a resume never mixes code versions)."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def run_key(*parts: Any) -> str:
    """A short hash identifying a run (params, data ids, code)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % 2**63


def check_finite(loss: torch.Tensor, parts: dict[str, float], epoch: int, step: int) -> None:
    """Stop with the step and every loss term when the loss is NaN or infinite."""
    if not math.isfinite(float(loss.detach())):
        terms = ", ".join(f"{k}={v:.4g}" for k, v in parts.items())
        raise BnrError(f"train_cam: loss is not finite at epoch {epoch + 1}, step {step} ({terms})")


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save ``state`` atomically (a kill mid-write leaves the previous checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state_strict(model: nn.Module, state_dict: dict, source: Path | str) -> None:
    """``load_state_dict(strict=True)`` with missing/unexpected/shape problems as one line."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or shapes:
        bits = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if keys:
                bits.append(f"{len(keys)} {name} key(s) e.g. {', '.join(keys[:3])}")
        raise BnrError(f"{source}: checkpoint does not fit the model ({'; '.join(bits)})")
    model.load_state_dict(state_dict, strict=True)


def load_checkpoint(path: Path, expected_meta: dict) -> dict:
    """Load a checkpoint (weights_only) and check its ``meta`` matches ``expected_meta``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear line
        raise BnrError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise BnrError(f"{path}: not a bnr checkpoint (no 'model' and 'meta' entries)")
    for key, value in expected_meta.items():
        if state["meta"].get(key) != value:
            raise BnrError(
                f"{path}: checkpoint was made with {key}={state['meta'].get(key)!r}, "
                f"this run needs {key}={value!r}"
            )
    return state


def open_live(run_dir: Path, resumed: bool, live_factory: Callable[..., Any] | None = None) -> Any:
    """A dvclive logger writing to ``run_dir/dvclive`` (appending when ``resumed``)."""
    (run_dir / "dvclive").mkdir(parents=True, exist_ok=True)
    if live_factory is None:
        from dvclive import Live

        live_factory = Live
    return live_factory(dir=str(run_dir / "dvclive"), resume=resumed, save_dvc_exp=False,
                        dvcyaml=None, report=None)


def finish_run(
    model: nn.Module, meta: dict, params: Params, model_out: Path, curves_out: Path, run_dir: Path
) -> None:
    """Write the final weights and the curves (both atomically), then drop the resume state."""
    save_checkpoint(model_out, {"model": model.state_dict(), "meta": meta,
                                "protocol": params.protocol()})
    with atomic_path(curves_out) as tmp:
        shutil.copytree(run_dir / "dvclive", tmp)
    shutil.rmtree(run_dir, ignore_errors=True)  # finished: the next run trains afresh


def cam_model_meta(params: Params) -> dict:
    """What a CAM checkpoint must agree on to be loaded."""
    return {
        "kind": "cam",
        "preset": params.data.model,
        "num_classes": len(class_names(params.dataset)),
        "dataset": params.dataset,
    }


def build_cam_model(params: Params) -> nn.Module:
    """A fresh Conformer for ``params`` (ImageNet-initialised when train_cam.pretrained is set)."""
    model = create_conformer(params.data.model, num_classes=len(class_names(params.dataset)))
    if params.train_cam.pretrained:
        load_pretrained(model, params.train_cam.pretrained)
    return model


def train_cam(
    params: Params,
    model_out: Path,
    curves_out: Path,
    run_root: Path = Path("runs/train_cam"),
    stop_after_epoch: int | None = None,
    progress: bool = True,
    live_factory: Callable[..., Any] | None = None,
) -> dict:
    """Train the CAM network; write ``model_out`` and the dvclive curves to ``curves_out``.

    ``stop_after_epoch`` ends the call after that many epochs (as an interruption would),
    leaving the resume checkpoint. Returns a summary (per-epoch mean losses, timings).
    """
    data = params.data
    names = class_names(params.dataset)
    dataset = VocSegmentation(
        data.root, data.train_split, names, with_mask=False,
        transform=TrainTransform(data.crop_size, data.resize_long, params.train_cam.color_jitter),
    )
    meta = cam_model_meta(params)
    key = run_key(params.protocol(), asdict(params.train_cam), dataset.ids, source_digest())
    run_dir = run_root / key
    ckpt_path = run_dir / "last.pt"

    torch.manual_seed(params.seed)
    model = build_cam_model(params)
    no_decay = getattr(model, "no_weight_decay", lambda: set())()
    decay = [p for n, p in model.named_parameters() if n not in no_decay]
    keep = [p for n, p in model.named_parameters() if n in no_decay]
    optimizer = torch.optim.AdamW(
        [{"params": decay}, {"params": keep, "weight_decay": 0.0}],
        lr=data.lr, weight_decay=data.weight_decay, eps=params.train_cam.adam_eps,
    )
    start_epoch, step, history = 0, 0, []
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, meta)
        load_state_strict(model, state["model"], ckpt_path)
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        print(f"resuming train_cam from {ckpt_path} (epoch {start_epoch}/{data.epochs})")

    live = open_live(run_dir, start_epoch > 0, live_factory)
    if start_epoch == 0:
        live.log_params({"method": params.method, "noise_scale": params.noise_scale,
                         "seed": params.seed, "model": data.model, "lr": data.lr})
    num_blocks = model.cfg.depth
    started = time.time()
    for epoch in range(start_epoch, data.epochs):
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            live.end()
            return {"interrupted_at_epoch": epoch}
        torch.manual_seed(epoch_seed(params.seed, epoch))
        shuffle = torch.Generator().manual_seed(epoch_seed(params.seed, epoch) + 1)
        loader = DataLoader(
            dataset, batch_size=data.batch_size, shuffle=True, generator=shuffle,
            num_workers=params.train_cam.num_workers, drop_last=len(dataset) > data.batch_size,
        )
        model.train()
        sums: dict[str, float] = {}
        batches = 0
        bar = tqdm(loader, desc=f"train_cam {epoch + 1}/{data.epochs}", disable=not progress,
                   leave=False)
        for batch in bar:
            outputs = model(batch["image"])
            loss, parts = total_loss(
                outputs, batch["labels"], params.method, params.noise_scale, num_blocks
            )
            check_finite(loss, parts, epoch, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            batches += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if step % params.train_cam.log_every == 0:
                live.step = step
                for k, v in parts.items():
                    live.log_metric(f"train/{k}", v)
                live.log_metric("train/lr", optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{parts['loss']:.4f}")
        means = {k: v / max(batches, 1) for k, v in sums.items()}
        history.append({"epoch": epoch + 1, **means})
        live.step = step
        for k, v in means.items():
            live.log_metric(f"epoch/{k}", v)
        live.log_metric("epoch/epoch", epoch + 1)
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1, "step": step, "history": history, "meta": meta,
        })
        terms = ", ".join(f"{k}={v:.4f}" for k, v in means.items())
        print(f"epoch {epoch + 1}/{data.epochs}: {terms}")
    live.end()

    finish_run(model, meta, params, model_out, curves_out, run_dir)
    return {"epochs": data.epochs, "steps": step, "history": history,
            "seconds_this_run": round(time.time() - started, 1),
            "train_images": len(dataset)}
