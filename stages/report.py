"""Stage report: metrics/report.md, our mIoU next to the paper's at every step and how each
number was obtained. It reads only its declared inputs; the DVC experiments are tabled outside
the pipeline by ``bnr experiments``."""

from pathlib import Path

from bnr.config import Params
from bnr.io import write_text
from bnr.report import build_report
from bnr.stage import run_stage


def main(params: Params) -> None:
    text = build_report(params.dataset, Path("metrics"))
    write_text("metrics/report.md", text)
    print(text)


if __name__ == "__main__":
    run_stage(main, __doc__)
