"""Stage weights: fingerprints (size, sha256) of the pretrained weight files the training stages
load, downloading a known source's missing file; each training stage depends on its own.

Its work: bnr/steps/weights.py; its paths: the options of its cmd in dvc.yaml."""

from bnr.pipeline.stage import stage_main
from bnr.steps import weights

if __name__ == "__main__":
    stage_main(weights)
