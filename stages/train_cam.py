"""Stage train_cam: train the Conformer CAM network (TransCAM baseline or BNR).

Its work: bnr/steps/train_cam.py; its paths: the options of its cmd in dvc.yaml."""

from bnr.pipeline.stage import stage_main
from bnr.steps import train_cam

if __name__ == "__main__":
    stage_main(train_cam)
