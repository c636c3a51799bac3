"""What every metrics JSON records about how its number was obtained."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import bnr


def git_state(cwd: str | Path = ".") -> dict:
    """The git commit of the working tree and whether it had uncommitted changes."""
    def run(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = run("rev-parse", "HEAD")
    dirty = bool(run("status", "--porcelain", "--untracked-files=no")) if commit else None
    return {"commit": commit or None, "dirty": dirty}


def environment() -> dict:
    return {
        "bnr": bnr.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),  # the device used: the ``runtime`` field
    }


def protocol_record(params: Any, **fields: Any) -> dict:
    """The ``protocol`` block: evaluation fields given by the stage, plus params, git, env."""
    return {**fields, "params": params.protocol(), "git": git_state(), "env": environment()}
