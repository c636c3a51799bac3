"""Stage crf: dense-CRF the random-walk labels into pseudo labels; mIoU of seeds / RW / CRF.

Its work: bnr/steps/crf.py; its paths: the options of its cmd in dvc.yaml."""

from bnr.pipeline.stage import stage_main
from bnr.steps import crf

if __name__ == "__main__":
    stage_main(crf)
