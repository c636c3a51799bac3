#!/usr/bin/env bash
# One prepared GPU check (bench/gpu_check.py): train_cam throughput, seed inference, seed mIoU
# float32 vs bfloat16, random walk, projected VOC training time; under 5 minutes on one H100.
# Usage: bash bench/gpu_check.sh [--budget 270] [--json PATH] [--device cpu --smoke] [--help]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1
if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python  # e.g. a GPU machine whose system Python has torch (.venv is not copied there)
fi
exec "$PY" bench/gpu_check.py "$@"
