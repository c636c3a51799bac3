"""scripts/bootstrap.sh runs its arguments with the environment first on PATH (README command 1:
the DVC stage commands call plain `python`, which must be the environment's)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def test_bootstrap_runs_its_arguments_with_the_environments_python() -> None:
    venv = Path(sys.prefix)
    stamp = venv / ".bnr-installed"
    if not stamp.is_file() or stamp.stat().st_mtime < (REPO / "pyproject.toml").stat().st_mtime:
        pytest.skip("this environment was not installed by scripts/bootstrap.sh (would reinstall)")
    env = {**os.environ, "BNR_VENV": str(venv), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "bootstrap.sh"), "python", "-c",
         "import sys, bnr; print(sys.prefix)"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip().splitlines()[-1]).resolve() == venv.resolve()
