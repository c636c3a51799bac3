"""Stage train_affinity: train PSA's AffinityNet on affinity labels from the seed CAMs.

Its work: bnr/steps/train_affinity.py; its paths: the options of its cmd in dvc.yaml."""

from bnr.pipeline.stage import stage_main
from bnr.steps import train_affinity

if __name__ == "__main__":
    stage_main(train_affinity)
