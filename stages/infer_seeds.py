"""Stage infer_seeds: multi-scale + flip CAMs (M*) of every image of the inference split.

Its work: bnr/steps/infer_seeds.py; its paths: the options of its cmd in dvc.yaml."""

import sys
from pathlib import Path

# This checkout's bnr first (a DVC experiment runs in a copy of the tree): without it an
# installed (editable) bnr of another checkout would run instead.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bnr.pipeline.stage import stage_main  # noqa: E402
from bnr.steps import infer_seeds  # noqa: E402

if __name__ == "__main__":
    stage_main(infer_seeds)
