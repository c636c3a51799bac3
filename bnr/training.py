"""Training loops with per-epoch checkpoints, exact resume, dvclive curves and progress bars.

Every loop runs on ``runtime.device`` in ``runtime.precision`` (bnr/runtime.py) and, under
``torchrun``, data-parallel (bnr/distributed.py): params hold the global batch, each process
takes a slice, only the main process writes checkpoints, curves and outputs.

Resume checkpoints live in ``runs/<stage>/<key>/last.pt``, outside every DVC output (DVC deletes
a stage's outputs before re-running it). ``key`` hashes the params, the dataset split and the
library source, so a checkpoint is only resumed by the identical run. Each epoch reseeds torch
from ``(seed, epoch)`` and the shuffle order comes from its own generator, so an interrupted run
that resumes ends with the same weights as one that was not interrupted (on CPU).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
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
from bnr.distributed import (
    SINGLE,
    DistContext,
    SeededItems,
    barrier,
    context_from_env,
    init_distributed,
    mean_over_processes,
    shard,
    shutdown_distributed,
    unwrap,
    wrap_model,
)
from bnr.errors import BnrError
from bnr.io import atomic_path
from bnr.losses import total_loss
from bnr.models.conformer import create_conformer, load_pretrained
from bnr.pretrained import pretrained_path
from bnr.runtime import CPU, Runtime, start_runtime

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


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of the sample at ``position`` of ``epoch``'s order."""
    return (epoch_seed(seed, epoch) * 31 + position * 1_000_033 + 5) % 2**63


def epoch_batches(n: int, batch: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The global batches of one epoch: lists of ``(index, sample_seed)``.

    The order is a permutation seeded by ``(seed, epoch)``; the last incomplete batch is
    dropped, except that fewer than ``batch`` samples make one batch of all of them.
    """
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch) + 1)
    order = torch.randperm(n, generator=gen).tolist()
    size = min(batch, n)
    return [[(order[pos], sample_seed(seed, epoch, pos)) for pos in range(b * size, (b + 1) * size)]
            for b in range(n // size)]


@contextlib.contextmanager
def training_session(params: Params) -> Iterator[tuple[Runtime, DistContext]]:
    """The runtime and process context of a training stage: joins the torchrun job (if any),
    sets the CPU threads, and leaves the job at the end."""
    ctx = context_from_env()
    runtime = start_runtime(params.runtime, ctx.local_rank, ctx.world_size)
    init_distributed(runtime.device, ctx)
    try:
        yield runtime, ctx
    finally:
        shutdown_distributed()


def shard_loader(
    dataset: Any, batches: Sequence[Sequence[Any]], ctx: DistContext, runtime: Runtime,
    num_workers: int | str,
) -> DataLoader:
    """A loader over this process's slice of each global batch (decoding and augmentation in
    ``num_workers`` worker processes, ``auto`` resolved by the runtime; pinned memory for
    CUDA)."""
    return DataLoader(dataset, batch_sampler=[shard(b, ctx) for b in batches],
                      num_workers=runtime.loader_workers(num_workers),
                      pin_memory=runtime.pin_memory)


class NullLive:
    """Stands in for dvclive on the non-main processes."""

    step = 0

    def log_params(self, params: dict) -> None:
        pass

    def log_metric(self, name: str, value: float) -> None:
        pass

    def end(self) -> None:
        pass


def float_outputs(outputs: Any) -> Any:
    """Network outputs (a tensor or a dict of them) in float32: losses are computed in float32
    whatever the autocast precision of the forward pass."""
    if isinstance(outputs, dict):
        return {k: v.float() if torch.is_tensor(v) else v for k, v in outputs.items()}
    return outputs.float()


def check_finite(parts: dict[str, float], epoch: int, step: int) -> None:
    """Stop with the step and every loss term when the loss is NaN or infinite (``parts`` are
    averaged over processes first, so every process of a torchrun job stops together)."""
    if not math.isfinite(parts["loss"]):
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


def open_live(run_dir: Path, resumed: bool, live_factory: Callable[..., Any] | None = None,
              ctx: DistContext = SINGLE) -> Any:
    """A dvclive logger writing to ``run_dir/dvclive`` (appending when ``resumed``); a no-op
    logger on processes other than the main one."""
    if not ctx.is_main:
        return NullLive()
    (run_dir / "dvclive").mkdir(parents=True, exist_ok=True)
    if live_factory is None:
        from dvclive import Live

        live_factory = Live
    return live_factory(dir=str(run_dir / "dvclive"), resume=resumed, save_dvc_exp=False,
                        dvcyaml=None, report=None)


def cpu_state(model: nn.Module) -> dict:
    """The state dict of the plain model (no DDP prefix), on the CPU (checkpoints load anywhere)."""
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def finish_run(
    model: nn.Module, meta: dict, params: Params, model_out: Path, curves_out: Path, run_dir: Path
) -> None:
    """Write the final weights and the curves (both atomically), then drop the resume state."""
    save_checkpoint(model_out, {"model": cpu_state(model), "meta": meta,
                                "protocol": params.protocol()})
    with atomic_path(curves_out) as tmp:
        shutil.copytree(run_dir / "dvclive", tmp)
    shutil.rmtree(run_dir, ignore_errors=True)  # finished: the next run trains afresh


def resume_state(ckpt_path: Path, meta: dict, model: nn.Module, stage: str,
                 ctx: DistContext = SINGLE) -> dict | None:
    """The resume checkpoint of an interrupted run (its weights loaded strictly into
    ``model``), or None when the run starts afresh."""
    if not ckpt_path.is_file():
        return None
    state = load_checkpoint(ckpt_path, meta)
    load_state_strict(model, state["model"], ckpt_path)
    if ctx.is_main:
        done = ", ".join(f"{k} {state[k]}" for k in ("epoch", "step", "iteration") if k in state)
        print(f"resuming {stage} from {ckpt_path} ({done} done)")
    return state


def place_for_training(
    model: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    state: dict | None, runtime: Runtime, ctx: DistContext,
) -> tuple[nn.Module, torch.optim.Optimizer, nn.Module]:
    """Move ``model`` to the device, build its optimizer (restored from ``state``) and wrap it
    for data-parallel training: returns ``(model, optimizer, net)``, ``net`` being what the
    loop calls (DDP under torchrun, else ``model`` itself)."""
    model = runtime.prepare_model(model)
    optimizer = make_optimizer(model)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    return model, optimizer, wrap_model(model, ctx, runtime.device)


def poly_sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float
             ) -> torch.optim.SGD:
    """SGD over PSA's 1x/2x/10x/20x learning-rate groups (``lr_mult`` per group; the loops set
    each group's lr from the poly schedule)."""
    from bnr.models.resnet38 import param_groups

    return torch.optim.SGD(param_groups(model, lr, weight_decay), lr=lr, momentum=momentum,
                           weight_decay=weight_decay)


def cam_model_meta(params: Params) -> dict:
    """What a CAM checkpoint must agree on to be loaded."""
    return {
        "kind": "cam",
        "preset": params.data.model,
        "num_classes": len(class_names(params.dataset)),
        "dataset": params.dataset,
    }


def build_cam_model(params: Params, pretrained: bool = True) -> nn.Module:
    """A fresh Conformer for ``params`` (pretrained when train_cam.pretrained names weights;
    ``auto``: see bnr/pretrained.py). ``pretrained=False``: random weights, for a caller that
    loads a trained checkpoint next."""
    model = create_conformer(params.data.model, num_classes=len(class_names(params.dataset)))
    weights = (pretrained_path(params.train_cam.pretrained, params.dataset, "conformer")
               if pretrained else "")
    if weights:
        load_pretrained(model, weights)
    return model


def train_cam(
    params: Params,
    model_out: Path,
    curves_out: Path,
    run_root: Path = Path("runs/train_cam"),
    stop_after_epoch: int | None = None,
    progress: bool = True,
    live_factory: Callable[..., Any] | None = None,
    runtime: Runtime = CPU,
    ctx: DistContext = SINGLE,
) -> dict:
    """Train the CAM network; write ``model_out`` and the dvclive curves to ``curves_out``.

    ``stop_after_epoch`` ends the call after that many epochs (as an interruption would),
    leaving the resume checkpoint. ``runtime`` / ``ctx``: device, precision and this process's
    place in a torchrun job (:func:`training_session`). Returns a summary (per-epoch mean
    losses, timings); only the main process writes files.
    """
    data = params.data
    names = class_names(params.dataset)
    dataset = VocSegmentation(
        data.root, data.train_split, names, with_mask=False,
        transform=TrainTransform(data.crop_size, data.resize_long, params.train_cam.color_jitter),
    )
    meta = cam_model_meta(params)
    key = run_key(params.protocol(), asdict(params.train_cam), dataset.ids, source_digest(),
                  runtime.precision)
    run_dir = run_root / key
    ckpt_path = run_dir / "last.pt"

    torch.manual_seed(params.seed)
    model = build_cam_model(params)
    state = resume_state(ckpt_path, meta, model, "train_cam", ctx)
    start_epoch, step, history = (0, 0, []) if state is None else (
        state["epoch"], state["step"], state["history"])

    def adamw(m: nn.Module) -> torch.optim.Optimizer:
        no_decay = getattr(m, "no_weight_decay", lambda: set())()
        decay = [p for n, p in m.named_parameters() if n not in no_decay]
        keep = [p for n, p in m.named_parameters() if n in no_decay]
        return torch.optim.AdamW(
            [{"params": decay}, {"params": keep, "weight_decay": 0.0}],
            lr=data.lr, weight_decay=data.weight_decay, eps=params.train_cam.adam_eps,
        )

    model, optimizer, net = place_for_training(model, adamw, state, runtime, ctx)
    num_blocks = model.cfg.depth

    live = open_live(run_dir, start_epoch > 0, live_factory, ctx)
    if start_epoch == 0:
        live.log_params({"method": params.method, "noise_scale": params.noise_scale,
                         "seed": params.seed, "model": data.model, "lr": data.lr})
    items = SeededItems(dataset)
    started = time.time()
    for epoch in range(start_epoch, data.epochs):
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            live.end()
            return {"interrupted_at_epoch": epoch}
        torch.manual_seed(epoch_seed(params.seed, epoch) + ctx.rank)  # dropout / drop-path
        batches = epoch_batches(len(dataset), data.batch_size, params.seed, epoch)
        loader = shard_loader(items, batches, ctx, runtime, params.train_cam.num_workers)
        net.train()
        sums: dict[str, float] = {}
        count = 0
        bar = tqdm(loader, desc=f"train_cam {epoch + 1}/{data.epochs}",
                   disable=not (progress and ctx.is_main), leave=False)
        for batch in bar:
            images = runtime.to_device(batch["image"])  # (B/N, 3, crop, crop)
            labels = batch["labels"].to(runtime.device)  # (B/N, S)
            with runtime.autocast():
                outputs = net(images)
            loss, parts = total_loss(
                float_outputs(outputs), labels, params.method, params.noise_scale, num_blocks
            )
            parts = mean_over_processes(parts, ctx)
            check_finite(parts, epoch, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            count += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if step % params.train_cam.log_every == 0:
                live.step = step
                for k, v in parts.items():
                    live.log_metric(f"train/{k}", v)
                live.log_metric("train/lr", optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{parts['loss']:.4f}")
        means = {k: v / max(count, 1) for k, v in sums.items()}
        history.append({"epoch": epoch + 1, **means})
        live.step = step
        for k, v in means.items():
            live.log_metric(f"epoch/{k}", v)
        live.log_metric("epoch/epoch", epoch + 1)
        if ctx.is_main:
            save_checkpoint(ckpt_path, {
                "model": cpu_state(model), "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1, "step": step, "history": history, "meta": meta,
            })
            terms = ", ".join(f"{k}={v:.4f}" for k, v in means.items())
            print(f"epoch {epoch + 1}/{data.epochs}: {terms}")
    live.end()

    if ctx.is_main:
        finish_run(model, meta, params, model_out, curves_out, run_dir)
    barrier(ctx)
    return {"epochs": data.epochs, "steps": step, "history": history,
            "seconds_this_run": round(time.time() - started, 1),
            "train_images": len(dataset)}
