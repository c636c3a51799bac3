"""Write metrics/fully_supervised.json from finished `train_segmenter.labels=ground_truth`
experiments (bnr/pipeline/fully_supervised.py):

    dvc exp run -n gt-seed0 -S train_segmenter.labels=ground_truth
    python scripts/record_fully_supervised.py gt-seed0 [gt-seed1 ...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bnr.errors import BnrError  # noqa: E402
from bnr.pipeline.fully_supervised import record_runs  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    try:
        doc = record_runs(sys.argv[1:], Path("metrics/fully_supervised.json"))
    except BnrError as exc:
        sys.exit(f"error: {exc}")
    print(f"fully supervised: {doc['miou_mean']} ± {doc['miou_std']} over {len(doc['runs'])} "
          f"runs ({doc['split']})")
