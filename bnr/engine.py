"""The one training engine: every training stage hands it a model, an optimizer factory, a
dataset and a step function, and gets per-period checkpoints, exact resume, dvclive curves,
a progress bar, the finite-loss check, data-parallel training and mixed precision.

* Runs on ``runtime.device`` in ``runtime.precision`` (bnr/runtime.py) and, under ``torchrun``,
  data-parallel (bnr/distributed.py): batch sizes are global, each process takes a slice, only
  the main process writes checkpoints, curves and outputs.
* Resume checkpoints live in ``runs/<stage>/<key>/last.pt``, outside every DVC output (DVC
  deletes a stage's outputs before re-running it). ``key`` hashes the params, the data and the
  library source, so a checkpoint is only resumed by the identical run.
* A run is a list of periods (an epoch, or a block of iterations), each a list of global batches
  of ``(index, sample_seed)``; a checkpoint ends every period. Every step reseeds torch from
  ``(seed, step)`` (dropout, drop-path) and every sample draws its augmentation from its own
  seed, so an interrupted run that resumes ends with the same weights as one that was not
  interrupted (on the same machine), whatever the number of loader workers or processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from bnr.checkpoints import load_checkpoint, load_state_strict, save_checkpoint
from bnr.config.params import RuntimeConfig
from bnr.curves import remove_stale_temporaries, trim_curves
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
from bnr.runtime import CPU, Runtime, seed_torch, start_runtime

PACKAGE_DIR = Path(__file__).resolve().parent


def source_digest() -> str:
    """sha256 of the library's source files (a resume never mixes code versions)."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def files_digest(paths: Sequence[Path]) -> str:
    """sha256 over the names and bytes of ``paths`` (a resume never mixes input CAMs)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    return h.hexdigest()[:16]


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
def training_session(runtime_cfg: RuntimeConfig) -> Iterator[tuple[Runtime, DistContext]]:
    """The runtime and process context of a training stage (params' ``runtime`` block): joins
    the torchrun job (if any), sets the CPU threads, and leaves the job at the end."""
    ctx = context_from_env()
    runtime = start_runtime(runtime_cfg, ctx.local_rank, ctx.world_size)
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


def finish_run(model: nn.Module, meta: dict, protocol: dict, model_out: Path | None,
               curves_out: Path | None, run_dir: Path) -> None:
    """Write the final weights and the curves (both atomically; None: not written, e.g. a
    stage that writes its weights in a layout of its own), then drop the resume state."""
    if model_out is not None:
        save_checkpoint(model_out, {"model": cpu_state(model), "meta": meta,
                                    "protocol": protocol})
    if curves_out is not None:
        with atomic_path(curves_out) as tmp:
            shutil.copytree(run_dir / "dvclive", tmp)
    shutil.rmtree(run_dir, ignore_errors=True)  # finished: the next run trains afresh


def resume_state(ckpt_path: Path, meta: dict, model: nn.Module, stage: str,
                 ctx: DistContext = SINGLE) -> dict | None:
    """The resume checkpoint of an interrupted run (its weights loaded strictly into
    ``model``), or None when the run starts afresh."""
    if ctx.is_main:
        remove_stale_temporaries([ckpt_path])  # a checkpoint write cut short by a kill
    if not ckpt_path.is_file():
        return None
    state = load_checkpoint(ckpt_path, meta)
    load_state_strict(model, state["model"], ckpt_path)
    if ctx.is_main:  # curve points logged after the checkpoint are logged again: drop them
        trim_curves(ckpt_path.parent / "dvclive", int(state["step"]))
        print(f"resuming {stage} from {ckpt_path} (period {state['period']}, "
              f"step {state['step']} done)")
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


def poly_lr(base: float, step: int, max_step: int, power: float = 0.9) -> float:
    """Poly schedule: ``base * (1 - step / max_step) ** power`` (0 from ``max_step`` on)."""
    return base * (1 - step / max_step) ** power if step < max_step else 0.0


def check_finite(values: dict[str, float], where: str, hint: str = "") -> None:
    """Stop with ``where`` and every loss term when the loss is NaN or infinite (``values`` are
    averaged over processes first, so every process of a torchrun job stops together)."""
    if not math.isfinite(values["loss"]):
        terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise BnrError(f"loss is not finite at {where} ({terms}){hint}")


StepFn = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class Loop:
    """A training run as the engine sees it.

    ``period_batches(p)``: the global batches of period ``p`` (lists of ``(index, seed)``).
    ``lr_at(step)``: the base learning rate of a step (each group gets it times its
    ``lr_mult``); None keeps the optimizer's own. ``summed``: value keys that are per-process
    counts (multiplied by the process count after averaging).
    """

    stage: str
    seed: int
    meta: dict
    protocol: dict
    run_dir: Path
    num_periods: int
    period_batches: Callable[[int], list[list[tuple[int, int]]]]
    total_steps: int
    num_workers: int | str = 0
    log_every: int = 10
    lr_at: Callable[[int], float] | None = None
    log_keys: Sequence[str] | None = None
    summed: Sequence[str] = ()
    period_name: str = "epoch"
    hint: str = ""
    live_params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` did. ``interrupted``: it stopped early (``stop_after_*``) at the start
    of period ``period`` after ``steps`` steps, leaving the resume checkpoint; otherwise
    ``period == periods``. ``history``: one entry per finished period (its mean values,
    seconds)."""

    interrupted: bool
    period: int
    periods: int
    steps: int
    resumed_from_step: int
    history: list[dict]
    seconds_this_run: float


def _logged(keys: Sequence[str] | None, values: dict[str, float]) -> list[str]:
    """The keys of ``values`` to log and print: ``keys`` (those present) or all of them."""
    return [k for k in (keys or values) if k in values]


def fit(
    loop: Loop,
    model: nn.Module,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    dataset: Dataset,
    step_fn: StepFn,
    model_out: Path | None,
    curves_out: Path | None,
    *,
    runtime: Runtime = CPU,
    ctx: DistContext = SINGLE,
    progress: bool = True,
    live_factory: Callable[..., Any] | None = None,
    stop_after_period: int | None = None,
    stop_after_step: int | None = None,
) -> FitResult:
    """Train ``model`` with ``step_fn(net, batch) -> (loss, values)`` over ``loop``'s periods;
    write ``model_out`` (weights, meta, protocol) and the curves (``curves_out``), each unless
    None (the trained weights are also left in ``model`` itself).

    ``values`` are this process's floats (the loss included or not); the engine averages them
    over processes, checks the loss, logs ``train/<key>`` every ``log_every`` steps and
    ``<period_name>/<key>`` (period means) after each period, and checkpoints after each period.
    ``stop_after_period`` / ``stop_after_step`` end the call early as an interruption would (the
    work after the last checkpoint is redone on resume).
    """
    ckpt_path = loop.run_dir / "last.pt"
    state = resume_state(ckpt_path, loop.meta, model, loop.stage, ctx)
    start, step, history = (0, 0, []) if state is None else (
        int(state["period"]), int(state["step"]), list(state["history"]))
    resumed_from = step
    model, optimizer, net = place_for_training(model, make_optimizer, state, runtime, ctx)
    live = open_live(loop.run_dir, state is not None, live_factory, ctx)
    if state is None:
        live.log_params(loop.live_params)
    items = SeededItems(dataset)
    started = time.time()
    bar = tqdm(total=loop.total_steps, initial=step, desc=loop.stage,
               disable=not (progress and ctx.is_main))

    def result(interrupted: bool, period: int) -> FitResult:
        return FitResult(interrupted, period, loop.num_periods, step, resumed_from, history,
                         round(time.time() - started, 1))

    try:
        for period in range(start, loop.num_periods):
            if stop_after_period is not None and period >= stop_after_period:
                return result(True, period)
            loader = shard_loader(items, loop.period_batches(period), ctx, runtime,
                                  loop.num_workers)
            net.train()
            sums: dict[str, float] = {}
            count, period_started = 0, time.time()
            for batch in loader:
                if stop_after_step is not None and step >= stop_after_step:
                    return result(True, period)
                if loop.lr_at is not None:
                    base_lr = loop.lr_at(step)
                    for group in optimizer.param_groups:
                        group["lr"] = base_lr * group.get("lr_mult", 1.0)
                seed_torch(epoch_seed(loop.seed, step) + ctx.rank)  # dropout of this step
                loss, values = step_fn(net, batch)
                values = mean_over_processes({**values, "loss": float(loss.detach())}, ctx)
                for key in loop.summed:  # counts of the whole global batch
                    values[key] *= ctx.world_size
                check_finite(values, f"{loop.period_name} {period + 1}, iteration {step + 1}",
                             loop.hint)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                count += 1
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                lr = optimizer.param_groups[0]["lr"]
                if step % loop.log_every == 0:
                    live.step = step
                    for k in _logged(loop.log_keys, values):
                        live.log_metric(f"train/{k}", values[k])
                    live.log_metric("train/lr", lr)
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}")
            means = {k: v / max(count, 1) for k, v in sums.items()}
            history.append({loop.period_name: period + 1, "step": step,
                            "seconds": round(time.time() - period_started, 1), **means})
            live.step = step
            shown = _logged(loop.log_keys, means)
            for k in shown:
                live.log_metric(f"{loop.period_name}/{k}", means[k])
            live.log_metric(f"{loop.period_name}/{loop.period_name}", period + 1)
            if ctx.is_main:
                save_checkpoint(ckpt_path, {
                    "model": cpu_state(model), "optimizer": optimizer.state_dict(),
                    "period": period + 1, "step": step, "history": history, "meta": loop.meta,
                })
                terms = ", ".join(f"{k}={means[k]:.4f}" for k in shown)
                tqdm.write(f"{loop.stage} {loop.period_name} {period + 1}/{loop.num_periods} "
                           f"({history[-1]['seconds']} s): {terms}")
    finally:
        bar.close()  # on an error too: the error line starts on a line of its own
        live.end()
    if ctx.is_main:
        finish_run(model, loop.meta, loop.protocol, model_out, curves_out, loop.run_dir)
    barrier(ctx)
    return result(False, loop.num_periods)
