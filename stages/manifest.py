"""Stage manifest: size and sha256 of every file under the dataset root (existing copies
included), the content DVC hashes for the stages that read the dataset.

Its work: bnr/steps/manifest.py; its paths: the options of its cmd in dvc.yaml."""

from bnr.pipeline.stage import stage_main
from bnr.steps import manifest

if __name__ == "__main__":
    stage_main(manifest)
