"""Stage download: generate (synthetic) or fetch and verify (voc2012, coco2014) the dataset."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bnr.config.params import Params
from bnr.data.prepare import DownloadRequest, prepare_dataset
from bnr.data.sources import mirror_overrides
from bnr.data.synthetic import SyntheticSpec
from bnr.errors import BnrError
from bnr.io import write_json


@dataclass(frozen=True)
class Inputs:
    """Nothing but params."""


@dataclass(frozen=True)
class Outputs:
    dataset: Path = field(metadata={"help": "the dataset's folder (datasets.<dataset>.root "
                                            "is it or lies inside it)"})
    stats: Path = field(metadata={"help": "dataset statistics (JSON; not compared metrics)"})


def download_request(cfg: Params, out: Path | None = None) -> DownloadRequest:
    """The values of ``cfg`` the download reads (the data layer takes no config); ``out`` is
    the stage's output folder ``<data dir>/<dataset>`` (None: ``data/<dataset>``)."""
    return DownloadRequest(
        data_dir=str(Path(out).parent) if out is not None else "data",
        dataset=cfg.dataset,
        root=cfg.data.root,
        test_split=cfg.data.test_split,
        synthetic=SyntheticSpec(**asdict(cfg.download.synthetic)),
        mirrors=dict(cfg.download.mirrors),
        existing_root=cfg.download.existing_root,
        allow_unverified=cfg.download.allow_unverified,
    )


def check(cfg: Params, inputs: Inputs) -> None:
    """A download setting that does not apply, or names what does not exist, is an error."""
    existing = cfg.download.existing_root
    shown = existing if len(existing) <= 60 else existing[:60] + "..."
    if existing and cfg.dataset == "synthetic":
        raise BnrError(f"params.yaml: download.existing_root={shown} does not apply to the "
                       "synthetic dataset (it is generated); set it to \"\"")
    if existing and not Path(existing).is_dir():
        raise BnrError(f"params.yaml: download.existing_root={shown}: no such folder")
    mirror_overrides(cfg.download.mirrors)  # an unknown source name, whatever the dataset


def run(cfg: Params, inputs: Inputs, outputs: Outputs) -> dict:
    """Prepare the dataset at its root; write its statistics."""
    root, out = Path(cfg.data.root), Path(outputs.dataset)
    if out.name != cfg.dataset:
        raise BnrError(f"dvc.yaml: the download stage's --dataset {out} must be a folder named "
                       f"{cfg.dataset} (the dataset's preparation writes <data dir>/{cfg.dataset})")
    if root != out and out not in root.parents:
        raise BnrError(f"params.yaml: datasets.{cfg.dataset}.root {root} is not inside the "
                       f"download stage's output {out} (DVC would not track the dataset)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stats = prepare_dataset(download_request(cfg, out))
    write_json(outputs.stats, stats)
    for warning in stats.get("warnings", []):
        print(f"warning: {warning}")
    print(f"dataset {cfg.dataset} ready at {cfg.data.root}")
    return {k: v for k, v in stats.items() if isinstance(v, (int, float))}
