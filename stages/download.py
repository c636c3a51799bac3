"""Stage download: generate (synthetic) or fetch and verify (voc2012, coco2014) the dataset."""

from bnr.config import Params
from bnr.data.prepare import prepare_dataset
from bnr.io import write_json
from bnr.stage import run_stage


def main(params: Params) -> None:
    stats = prepare_dataset(params)
    write_json("metrics/dataset.json", stats)
    print(f"dataset {params.dataset} ready at {params.data.root}")


if __name__ == "__main__":
    run_stage(main, __doc__)
