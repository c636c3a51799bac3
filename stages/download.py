"""Stage download: generate (synthetic) or fetch and verify (voc2012, coco2014) the dataset.

Its work: bnr/steps/download.py; its paths: the options of its cmd in dvc.yaml."""

from bnr.pipeline.stage import stage_main
from bnr.steps import download

if __name__ == "__main__":
    stage_main(download)
