#!/usr/bin/env bash
# Paper Table 5 on the current dataset: queue every arm x seed (x seed-map source) as a DVC
# experiment up to eval_seeds, run the queue, then print mean and spread of seed mIoU per arm
# (experiments of the current commit only).
#   SEEDS="0 1 2" SOURCES="transcam clsattn" JOBS=1 bash scripts/table5.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/dvc ] && export PATH="$PWD/.venv/bin:$PATH"
SEEDS=${SEEDS:-"0 1 2"}
SOURCES=${SOURCES:-"transcam"}
ARMS=("method=transcam" "method=bnr noise_scale=none" "method=bnr noise_scale=1.0"
      "method=bnr noise_scale=2.0")
for src in $SOURCES; do
  for seed in $SEEDS; do
    for arm in "${ARMS[@]}"; do
      args=()
      for kv in $arm; do args+=(-S "$kv"); done
      dvc exp run --queue "${args[@]}" -S "seed=$seed" -S "infer_seeds.source=$src" eval_seeds
    done
  done
done
dvc queue start -j "${JOBS:-1}"
sleep 10
# (status captured first: under pipefail, grep -q closing the pipe early would end the wait)
while status=$(dvc queue status 2>/dev/null) && grep -qE "Queued|Running" <<<"$status"; do
  sleep 30
done
dvc queue status
out=$(mktemp)
dvc exp show --csv --drop '.*' \
  --keep "$(python -c 'from bnr.pipeline.experiments import EXP_SHOW_COLUMNS as c; print(c)')" > "$out"
python -m bnr.pipeline.experiments "$out" $SOURCES
