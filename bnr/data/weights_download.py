"""Download a missing pretrained weights file named by a known source (the weights stage).

A ``*.pretrained`` path whose basename is the ``filename`` of ``conformer_s``,
``resnet38_mxnet`` or ``resnet38_pytorch`` (:data:`bnr.data.sources.SOURCES`) is downloaded to
that path (``download.mirrors`` apply) and verified against the source's checksum
(``resnet38_pytorch`` has none published: its sha256 is pinned on the first length-checked
download, :mod:`bnr.data.pins`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bnr.data.download import fetch_source
from bnr.data.sources import SOURCES, mirror_overrides, resolve_source

log = logging.getLogger(__name__)

WEIGHT_SOURCES = ("conformer_s", "resnet38_mxnet", "resnet38_pytorch")


def download_known_weights(
    key: str,
    path: str | os.PathLike[str],
    mirrors: Mapping[str, str],
    *,
    sources: Mapping[str, Any] | None = None,
    progress: bool = True,
    download_kwargs: Mapping[str, Any] | None = None,
) -> bool:
    """Download the missing weights file ``path`` (params key ``key``) when its basename is a
    known weight source's file name; False when it is none (nothing done). ``mirrors``:
    ``download.mirrors``; ``sources`` replaces the source table (tests); ``download_kwargs`` go
    to :func:`~bnr.data.download.download_file` (``allow_unverified`` among them)."""
    table = SOURCES if sources is None else sources
    overrides = mirror_overrides(mirrors, table)
    by_filename = {table[n].filename: n for n in WEIGHT_SOURCES if n in table}
    name = by_filename.get(Path(path).name)
    if name is None:
        return False
    src = resolve_source(name, overrides, table=table)
    fetch_source(src, Path(path).parent, progress=progress, **dict(download_kwargs or {}))
    log.info("%s: downloaded %s from %s", key, path, src.url)
    return True
