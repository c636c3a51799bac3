"""Stage download: generate (synthetic) or fetch and verify (voc2012, coco2014) the dataset."""

import logging
from dataclasses import asdict

from bnr.config import Params
from bnr.data.prepare import DownloadRequest, prepare_dataset
from bnr.data.synthetic import SyntheticSpec
from bnr.io import write_json
from bnr.stage import run_stage


def download_request(params: Params) -> DownloadRequest:
    """The values of ``params`` the download reads (the data layer takes no config)."""
    return DownloadRequest(
        dataset=params.dataset,
        root=params.data.root,
        test_split=params.data.test_split,
        synthetic=SyntheticSpec(**asdict(params.download.synthetic)),
        mirrors=dict(params.download.mirrors),
        existing_root=params.download.existing_root,
        allow_unverified=params.download.allow_unverified,
        pretrained={
            "train_cam.pretrained": params.train_cam.pretrained,
            "train_affinity.pretrained": params.train_affinity.pretrained,
        },
    )


def main(params: Params) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stats = prepare_dataset(download_request(params))
    write_json("metrics/dataset.json", stats)
    for warning in stats.get("warnings", []):
        print(f"warning: {warning}")
    print(f"dataset {params.dataset} ready at {params.data.root}")


if __name__ == "__main__":
    run_stage(main, __doc__)
