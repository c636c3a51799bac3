"""Stage pretrain: the synthetic demo's "ImageNet" (classification on a generated world).

Its work: bnr/steps/pretrain.py; its paths: the options of its cmd in dvc.yaml."""

from bnr.pipeline.stage import stage_main
from bnr.steps import pretrain

if __name__ == "__main__":
    stage_main(pretrain)
