"""Stage report: metrics/report.md, our mIoU next to the paper's at every step, and the
experiments of ``dvc exp show``."""

from pathlib import Path

from bnr.config import Params
from bnr.io import write_text
from bnr.report import build_report, dvc_experiments
from bnr.stage import run_stage


def main(params: Params) -> None:
    exp_json, note = dvc_experiments()
    text = build_report(params.dataset, Path("metrics"), exp_json, note)
    write_text("metrics/report.md", text)
    print(text)


if __name__ == "__main__":
    run_stage(main, __doc__)
