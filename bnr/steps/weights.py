"""Stage weights: fingerprint (and download, when a known source's) the pretrained weight files
the training stages load; one small JSON per training stage, its dependency
(bnr/weights/fingerprints.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from bnr.config.params import Params
from bnr.data.sources import mirror_overrides
from bnr.data.weights_download import download_known_weights
from bnr.pipeline.resolve import weights_file
from bnr.weights.fingerprints import CACHE_NAME, fingerprint, write_fingerprint
from bnr.weights.pretrained import TRAINING_BLOCKS


@dataclass(frozen=True)
class Inputs:
    """Nothing but params (the ``*.pretrained`` keys; ``pretrain`` means the pretrain stage's
    files, deps of this stage)."""


@dataclass(frozen=True)
class Outputs:
    cam_weights: Path = field(metadata={"help": "fingerprint of train_cam.pretrained (JSON)"})
    affinity_weights: Path = field(metadata={"help": "fingerprint of train_affinity.pretrained"})
    segmenter_weights: Path = field(metadata={"help": "fingerprint of "
                                                      "train_segmenter.pretrained"})


def fingerprint_files(outputs: Outputs) -> dict[str, Path]:
    """params block -> its fingerprint file."""
    return {"train_cam": outputs.cam_weights, "train_affinity": outputs.affinity_weights,
            "train_segmenter": outputs.segmenter_weights}


def check(cfg: Params, inputs: Inputs) -> None:
    """Every ``*.pretrained`` key means a file (or scratch) and every mirror a known source,
    before any fingerprint is written."""
    mirror_overrides(cfg.download.mirrors)
    for block in TRAINING_BLOCKS:
        weights_file(cfg, block)


def run(cfg: Params, inputs: Inputs, outputs: Outputs) -> dict:
    """Write each training stage's fingerprint (unchanged content: file untouched); sha256s
    come from a cache beside them (``.sha256-cache.json``, not an output)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    mirrors = dict(cfg.download.mirrors)
    download_kwargs = {"allow_unverified": cfg.download.allow_unverified}

    def fetch(key: str, path: str) -> bool:
        return download_known_weights(key, path, mirrors, download_kwargs=download_kwargs)

    files = 0
    for block, out in fingerprint_files(outputs).items():
        key = f"{block}.pretrained"
        path = weights_file(cfg, block)
        record = fingerprint(key, path, cache_path=Path(out).parent / CACHE_NAME, fetch=fetch)
        changed = write_fingerprint(Path(out), record)
        print(f"{out}: {key} = {path or 'from scratch'}{' (changed)' if changed else ''}")
        files += record["file"] is not None
    return {"weight_files": files}
