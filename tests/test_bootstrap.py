"""scripts/bootstrap.sh runs its arguments with the environment first on PATH (README command 1:
the DVC stage commands call plain `python`, which must be the environment's)."""

import os
import subprocess
from pathlib import Path

from tests.conftest import REPO


def test_bootstrap_runs_its_arguments_with_the_environments_python(tmp_path: Path) -> None:
    # An environment that bootstrap.sh takes as installed (python present, stamp newer than
    # pyproject.toml), whose `python` only says who it is.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"
    fake.write_text('#!/bin/sh\necho "venv python:" "$@"\n')
    fake.chmod(0o755)
    (venv / ".bnr-installed").touch()
    env = {**os.environ, "BNR_VENV": str(venv), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "bootstrap.sh"), "python", "-m", "x"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "venv python: -m x"
