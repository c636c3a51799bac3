"""Stage eval_seeds: seed mIoU over the background-threshold sweep, curve and overlays.

Its work: bnr/steps/eval_seeds.py; its paths: the options of its cmd in dvc.yaml."""

from bnr.pipeline.stage import stage_main
from bnr.steps import eval_seeds

if __name__ == "__main__":
    stage_main(eval_seeds)
