#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install bnr with its
# dependencies (dvc, pytest and ruff included). Safe to run again: it only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BNR_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
stamp="$VENV/.bnr-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
  touch "$stamp"
fi
# DVC and dvclive must never phone home; timm must never reach a hub for weights.
export DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1
# With arguments, run them with the environment's bin first on PATH: the DVC stage commands
# call `python`, which must be this environment's (`bash scripts/bootstrap.sh dvc repro`).
if [ "$#" -gt 0 ]; then
  export PATH="$(cd "$VENV" && pwd)/bin:$PATH"
  exec "$@"
fi
