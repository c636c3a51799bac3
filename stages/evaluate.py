"""Stage evaluate: segmentation mIoU on the val split (paper Table 2), predictions, overlays
and, for VOC 2012 with a test split, the evaluation-server archive.

Its work: bnr/steps/evaluate.py; its paths: the options of its cmd in dvc.yaml."""

from bnr.pipeline.stage import stage_main
from bnr.steps import evaluate

if __name__ == "__main__":
    stage_main(evaluate)
