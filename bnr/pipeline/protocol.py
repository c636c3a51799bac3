"""What every metrics JSON records about how its number was obtained."""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import bnr


def git_state(cwd: str | Path = ".") -> dict:
    """The git commit of the working tree, whether it had uncommitted changes to tracked files,
    and which (``changed``, at most 50 paths: a tree dirty only by pipeline outputs such as
    dvc.lock and metrics/ is a clean run of its commit)."""
    def run(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = run("rev-parse", "HEAD")
    if not commit:
        return {"commit": None, "dirty": None}
    changed = run("diff", "--name-only", "HEAD").splitlines()  # staged or not, tracked only
    return {"commit": commit, "dirty": bool(changed), "changed": changed[:50]}


def cpu_model_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's ``model name`` from ``cpuinfo`` (Linux), else ``platform.processor()``, else
    ``"unknown"``."""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_name() -> str | None:
    """The name of CUDA device 0 when torch sees one, else None."""
    if not torch.cuda.is_available():
        return None
    try:
        return torch.cuda.get_device_name(0)
    except (RuntimeError, AssertionError):  # a broken driver must not stop a metrics write
        return None


def environment() -> dict:
    """Software and machine of a run: float results differ across CPU kernels (ISA, threads),
    so the CPU model, torch's CPU capability (the ATen kernel set) and thread count are kept."""
    return {
        "bnr": bnr.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),  # the device used: the ``runtime`` field
        "cpu": cpu_model_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu_name(),
    }


def protocol_record(params: Any, **fields: Any) -> dict:
    """The ``protocol`` block: evaluation fields given by the stage, plus params, git, env and
    the date it was written (UTC, to the second)."""
    date = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    return {**fields, "params": params.protocol(), "git": git_state(), "env": environment(),
            "date": date}
