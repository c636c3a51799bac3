"""Stage infer_seeds: multi-scale + flip CAMs (M*) of every image of the inference split.

Its work: bnr/steps/infer_seeds.py; its paths: the options of its cmd in dvc.yaml."""

from bnr.pipeline.stage import stage_main
from bnr.steps import infer_seeds

if __name__ == "__main__":
    stage_main(infer_seeds)
