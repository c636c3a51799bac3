"""Data-parallel training with ``torchrun`` (DistributedDataParallel; gloo on CPU, NCCL on CUDA).

The batch size in params.yaml is always the GLOBAL batch: with N processes each one takes a
contiguous 1/N slice of every global batch, so N changes neither the samples of a step nor the
learning rate (no rescaling rule is needed: the lr in params.yaml belongs to the global batch).
Each sample's augmentation is seeded by ``(seed, step, position)``, not by a process's random
state, trainable BatchNorms are synchronised across processes (:class:`SyncBatchNorm2d`), and
losses normalised by a data-dependent count (affinity pairs, labelled pixels) divide by the
count over all processes (:func:`ddp_mean`). So a step of N processes computes the same
gradient as one process on the whole global batch, up to float summation order (tested with
two gloo processes in tests/test_distributed.py).

A stage started as a plain ``python stages/train_cam.py`` re-launches itself under
``torch.distributed.run`` when ``runtime.nproc`` > 1 (:func:`relaunch_under_torchrun`).
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from bnr.errors import BnrError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, curves, outputs and progress bars."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE = DistContext()


def context_from_env() -> DistContext:
    """The context torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (single without them)."""
    try:
        return DistContext(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                           int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise BnrError("RANK / WORLD_SIZE / LOCAL_RANK are not integers "
                       f"({os.environ.get('RANK')!r}, {os.environ.get('WORLD_SIZE')!r})") from None


def init_distributed(device: torch.device, ctx: DistContext) -> None:
    """Join the torchrun job ``ctx`` (gloo for CPU devices, NCCL for CUDA); a no-op for one
    process."""
    if ctx.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # rank 0 alone writes train_affinity's CRF labels while the others wait at a barrier:
        # on VOC that can outlast NCCL's 10-minute default
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=3))


def shutdown_distributed() -> None:
    """Wait for every process, then leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def relaunch_under_torchrun(nproc: int, argv: Sequence[str] | None = None) -> int | None:
    """Run this script again as ``torchrun --standalone --nproc_per_node nproc`` and return its
    exit code; None when nothing is to be done (nproc 1, or already inside torchrun)."""
    if nproc <= 1 or "LOCAL_RANK" in os.environ:
        return None
    argv = list(sys.argv if argv is None else argv)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *argv]
    print(f"runtime.nproc={nproc}: {' '.join(cmd)}", flush=True)
    with subprocess.Popen(cmd) as proc:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: torchrun passes SIGTERM to the workers
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


# ----------------------------------------------------------------------------------------------
# Data: global batches, each process's slice, per-sample seeds


def shard(batch: Sequence[T], ctx: DistContext) -> list[T]:
    """This process's contiguous slice of a global batch (the batch must split evenly)."""
    n = len(batch)
    if n % ctx.world_size:
        raise BnrError(f"params.yaml: a batch of {n} does not split over runtime.nproc="
                       f"{ctx.world_size} processes (use a batch size divisible by nproc)")
    per = n // ctx.world_size
    return list(batch[ctx.rank * per:(ctx.rank + 1) * per])


class SeededItems(Dataset):
    """``dataset`` addressed by ``(index, sample_seed)``: the item's random augmentation draws
    from torch's generator seeded with ``sample_seed`` (the caller's generator is restored), so
    an item is the same whichever process or loader worker builds it."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


# ----------------------------------------------------------------------------------------------
# Reductions


def all_reduce_sum(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over processes, no gradient (a copy; ``x`` itself is left alone)."""
    out = x.detach().clone()
    if ctx.enabled:
        dist.all_reduce(out)
    return out


def ddp_mean(total: torch.Tensor, count: torch.Tensor, ctx: DistContext,
             eps: float = 0.0, min_count: float = 0.0) -> torch.Tensor:
    """``total / max(count + eps, min_count)`` with ``count`` summed over all processes.

    Multiplied by ``world_size`` so that DDP's gradient AVERAGE over processes equals the
    gradient of the global ``sum(total) / sum(count)``: a per-process mean would weight each
    process equally whatever its count. One process: plain ``total / (count + eps)``.
    """
    if not ctx.enabled:
        return total / (count + eps).clamp(min=min_count)
    return total * ctx.world_size / (all_reduce_sum(count, ctx) + eps).clamp(min=min_count)


def mean_over_processes(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Average logged scalars over processes (each process's value is a mean of its slice)."""
    if not ctx.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist(), strict=True)}


# ----------------------------------------------------------------------------------------------
# Model


def differentiable_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum over processes with a gradient (the backward pass sums the gradients likewise)."""
    import warnings

    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():  # its successor in _functional_collectives is private
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(x)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken over the batch of ALL processes.

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors; this one reduces sums with a differentiable
    all-reduce, so it works with gloo (CPU) and NCCL (CUDA) alike, and as a BatchNorm2d
    subclass with the same state-dict keys its checkpoints load into plain models. Two passes
    (mean, then centred squares) keep the variance accurate. Outside training, or with one
    process, it is exactly ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        local = torch.cat([xf.sum(dim=(0, 2, 3)),
                           xf.new_full((1,), x.numel() // c)])  # (C + 1): sums, count
        total = differentiable_all_reduce(local)
        count = total[c]
        mean = total[:c] / count  # (C,)
        centred = xf - mean[None, :, None, None]
        var = differentiable_all_reduce(centred.pow(2).sum(dim=(0, 2, 3))) / count  # (C,)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(mean.detach() * m)
                self.running_var.mul_(1 - m).add_(unbiased.detach() * m)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every TRAINABLE ``nn.BatchNorm2d`` by :class:`SyncBatchNorm2d` in place (frozen
    ones, e.g. ResNet-38's ImageNet statistics in PSA, stay as they are), and those marked
    ``fixed_affine`` (affine not trained but batch statistics used, TransCAM's segmenter head).

    The new modules take over the very Parameter and buffer objects of the old ones, so an
    optimizer built before the conversion still updates them.
    """
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d and (child.weight is None or child.weight.requires_grad
                                              or getattr(child, "fixed_affine", False)):
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            for key, param in child._parameters.items():
                sync._parameters[key] = param
            for key, buf in child._buffers.items():
                sync._buffers[key] = buf
            sync.train(child.training)
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child)
    return model


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``model`` itself for one process, else synchronised BatchNorms inside DDP."""
    if not ctx.enabled:
        return model
    convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper (checkpoints hold its state dict)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
