"""Where and how tensors are computed: device, autocast precision, memory format, threads; and
the seeding of the random generators (:func:`seed_everything`, :func:`seed_torch`), the one
place a stage or a training function sets them.

One ``runtime`` block in params.yaml drives every stage that runs a network. ``auto`` values
resolve on the machine that runs the stage (CUDA when present, else CPU); the resolved values
are what the metrics' protocol records. float32 is always the CPU default: bfloat16 autocast
and ``channels_last`` are switched on by ``auto`` only on CUDA.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bnr.config.params import RuntimeConfig
from bnr.errors import BnrError
from bnr.threads import auto_threads, available_cores, free_cores

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """A resolved runtime: ``device``, autocast ``precision`` name, ``channels_last``,
    ``pin_memory`` of data loaders and the torch CPU ``num_threads`` of this process."""

    device: torch.device
    precision: str = "float32"
    channels_last: bool = False
    pin_memory: bool = False
    num_threads: int = 0
    auto_workers: int = 0

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """``torch.autocast`` in the chosen precision (no-op for float32)."""
        dtype = self.autocast_dtype
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            yield

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device (channels_last memory format when switched on)."""
        if self.channels_last:
            return model.to(self.device, memory_format=torch.channels_last)
        return model.to(self.device)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A batch tensor to the device; 4-D images in channels_last when switched on."""
        x = x.to(self.device, non_blocking=self.pin_memory)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def loader_workers(self, requested: int | str) -> int:
        """Data-loader worker processes for a ``num_workers`` param (``auto`` resolved)."""
        return self.auto_workers if requested == "auto" else int(requested)

    def record(self) -> dict:
        """What the protocol records about this runtime."""
        rec = {"device": str(self.device), "precision": self.precision,
               "channels_last": self.channels_last, "num_threads": self.num_threads}
        if self.device.type == "cuda":
            rec["device_name"] = torch.cuda.get_device_name(self.device)
        return rec


CPU = Runtime(torch.device("cpu"))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` -> a torch.device (``cuda:<local_rank>`` for CUDA)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise BnrError("params.yaml: runtime.device is cuda but torch sees no CUDA device")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def resolve_runtime(cfg: RuntimeConfig, local_rank: int = 0, nproc: int = 1) -> Runtime:
    """A :class:`Runtime` from a ``runtime`` params block (``bnr.config.params.RuntimeConfig``).

    ``auto`` precision = bfloat16 autocast on CUDA (when the card supports it), float32 on
    CPU; ``auto`` channels_last and pin_memory = on for CUDA only; ``num_threads`` 0 = the
    available cores shared evenly between the ``nproc`` processes of this machine (a single CPU
    process: only the cores idle at its start, :mod:`bnr.threads`); ``auto``
    data-loader workers = 0 on CPU, that share minus one (at most 8) on CUDA.
    """
    device = resolve_device(cfg.device, local_rank)
    cuda = device.type == "cuda"
    precision = cfg.precision
    if precision == "auto":
        precision = "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32"
    if precision == "float16" and not cuda:
        raise BnrError("params.yaml: runtime.precision float16 needs a CUDA device "
                       "(use bfloat16 or float32 on CPU)")
    channels_last = cuda if cfg.channels_last == "auto" else bool(cfg.channels_last)
    pin_memory = cuda if cfg.pin_memory == "auto" else bool(cfg.pin_memory)
    share = max(1, available_cores() // max(1, nproc))  # cores of each process
    # num_threads 0 on a CPU stage: one thread per idle core at start (bnr.threads; to be
    # measured with bench/threads.py); CUDA and several processes: the share
    threads = cfg.num_threads or (auto_threads(share, free_cores()) if not cuda and nproc == 1
                                  else share)
    # auto loader workers: none on CPU, where workers take cores from the computation (the
    # main process decodes 570 synthetic images/s, several times the CPU training rate);
    # on CUDA the process's cores but one, at most 8, decode and augment in parallel
    workers = min(8, share - 1) if cuda else 0
    return Runtime(device, precision, channels_last, pin_memory, threads, max(0, workers))


def apply_threads(runtime: Runtime) -> None:
    """Set torch's intra-op CPU threads (oversubscribed threads slow CPU training many-fold)."""
    if runtime.num_threads > 0 and torch.get_num_threads() != runtime.num_threads:
        torch.set_num_threads(runtime.num_threads)


def start_runtime(cfg: RuntimeConfig, local_rank: int = 0, nproc: int = 1) -> Runtime:
    """:func:`resolve_runtime` and apply its CPU threads to this process: what every stage
    (and ``bnr predict``) does before it builds a network."""
    runtime = resolve_runtime(cfg, local_rank, nproc)
    apply_threads(runtime)
    return runtime


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA): a stage's first act (``bnr/steps``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    seed_torch(seed)


def seed_torch(seed: int) -> None:
    """Seed torch's generators (CPU and CUDA) alone: where a draw must not depend on what ran
    before it (a network's initialisation, one training step's dropout)."""
    torch.manual_seed(seed)
