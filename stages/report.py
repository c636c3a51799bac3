"""Stage report: our mIoU next to the paper's at every step and how each number was obtained.
It reads only its declared inputs; the DVC experiments are tabled outside the pipeline by
``bnr experiments``.

Its work: bnr/steps/report.py; its paths: the options of its cmd in dvc.yaml."""

from bnr.pipeline.stage import stage_main
from bnr.steps import report

if __name__ == "__main__":
    stage_main(report)
