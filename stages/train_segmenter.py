"""Stage train_segmenter: DeepLab (LargeFOV on ResNet-38d) trained on the CRF pseudo labels.

Its work: bnr/steps/train_segmenter.py; its paths: the options of its cmd in dvc.yaml."""

from bnr.pipeline.stage import stage_main
from bnr.steps import train_segmenter

if __name__ == "__main__":
    stage_main(train_segmenter)
