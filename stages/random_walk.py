"""Stage random_walk: propagate the seed CAMs with AffinityNet affinities (sparse random walk).

Its work: bnr/steps/random_walk.py; its paths: the options of its cmd in dvc.yaml."""

from bnr.pipeline.stage import stage_main
from bnr.steps import random_walk

if __name__ == "__main__":
    stage_main(random_walk)
