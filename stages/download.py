"""Stage download: generate (synthetic) or fetch and verify (voc2012, coco2014) the dataset."""

import logging

from bnr.config import Params
from bnr.data.prepare import prepare_dataset
from bnr.io import write_json
from bnr.stage import run_stage


def main(params: Params) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stats = prepare_dataset(params)
    write_json("metrics/dataset.json", stats)
    for warning in stats.get("warnings", []):
        print(f"warning: {warning}")
    print(f"dataset {params.dataset} ready at {params.data.root}")


if __name__ == "__main__":
    run_stage(main, __doc__)
