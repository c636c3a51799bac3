"""Fingerprints of the pretrained weight files the training stages load (the ``weights`` stage).

``train_cam.pretrained``, ``train_affinity.pretrained`` and ``train_segmenter.pretrained`` name
a file ("" = from scratch; ``auto`` is resolved before, :mod:`bnr.weights.pretrained`). A path in
params is not something DVC can depend on, so the ``weights`` stage (``always_changed``, cheap)
writes one small JSON per training stage::

    {"file": null, "key": "train_cam.pretrained"}                             # from scratch
    {"bytes": 123, "file": "models/...", "key": "...", "sha256": "..."}     # a weights file

and each training stage depends on its JSON: replacing the weights file, or pointing the key at
another one, re-runs exactly that stage onwards; an unchanged file writes the identical JSON
and re-runs nothing. The training stage checks before it starts that the file still matches
(:func:`verify_fingerprint`).

A missing file whose basename is the ``filename`` of a known weight source (``conformer_s``,
``resnet38_mxnet``, ``resnet38_pytorch`` in :data:`bnr.data.sources.SOURCES`) is downloaded to
that path (``download.mirrors`` apply) and verified against the source's checksum
(``resnet38_pytorch`` has none published: its sha256 is pinned on the first length-checked
download, :mod:`bnr.data.pins`). Any other missing file is a one-line error.

sha256 digests are cached by ``(path, size, mtime_ns)`` in :data:`CACHE_NAME` beside the
fingerprints (not an output), so a 400 MB file is read once, not on every repro.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bnr.errors import BnrError
from bnr.io import sha256_file, write_json, write_text

CACHE_NAME = ".sha256-cache.json"  # beside the fingerprint files; not a DVC output


def cached_sha256(path: str | os.PathLike[str], cache_path: Path | None) -> str:
    """sha256 of ``path``, read from / written to the JSON cache ``cache_path`` (one entry per
    absolute path, valid while size and mtime_ns are unchanged; a damaged cache only costs
    re-hashing)."""
    st = os.stat(path)
    where, stamp = os.path.abspath(path), [st.st_size, st.st_mtime_ns]
    cache: Any = {}
    if cache_path is not None and cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text())
        except ValueError:
            cache = {}
    cache = cache if isinstance(cache, dict) else {}
    entry = cache.get(where)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and entry.get("sha256"):
        return str(entry["sha256"])
    digest = sha256_file(path)
    if cache_path is not None:
        write_json(cache_path, {**cache, where: {"stamp": stamp, "sha256": digest}})
    return digest


def fingerprint(
    key: str,
    path: str,
    *,
    cache_path: Path | None = None,
    fetch: Callable[[str, str], bool] | None = None,
) -> dict:
    """The fingerprint of the weights file ``path`` that params key ``key`` names (resolved:
    no ``auto``): ``{"file": None, "key"}`` for "", else ``{"bytes", "file", "key", "sha256"}``
    (keys sorted). A missing file is handed to ``fetch(key, path)`` (the weights stage:
    :func:`bnr.data.weights_download.download_known_weights`), which returns False when it
    cannot bring it; then a one-line BnrError."""
    if not path:
        return {"file": None, "key": key}
    if not Path(path).exists() and not (fetch is not None and fetch(key, path)):
        raise BnrError(f"{key}: {path} not found (and its name is no known weights download; "
                       "set the key to an existing file, or \"\" for from scratch)")
    if not Path(path).is_file():
        raise BnrError(f"{key}: {path} is not a file")
    return {"bytes": Path(path).stat().st_size, "file": str(path), "key": key,
            "sha256": cached_sha256(path, cache_path)}


def write_fingerprint(out: Path, record: Mapping[str, Any]) -> bool:
    """Write ``record`` to ``out`` (atomically, keys sorted); untouched when the content is the
    same. True when written."""
    text = json.dumps(dict(record), indent=2, sort_keys=True) + "\n"
    if out.is_file() and out.read_text() == text:
        return False
    write_text(out, text)
    return True


def verify_fingerprint(fingerprint_path: Path, key: str, path: str) -> None:
    """Check before training that ``fingerprint_path`` (written by the weights stage) describes
    the file params key ``key`` names now (``path``, resolved): same path and, for a file, same
    size and sha256 (cached). A one-line BnrError otherwise; cheap for "" (one small read)."""
    fingerprint_path = Path(fingerprint_path)
    try:
        record = json.loads(fingerprint_path.read_text())
    except FileNotFoundError:
        raise BnrError(f"{fingerprint_path}: not found (run the weights stage: "
                       "dvc repro weights)") from None
    except ValueError:
        raise BnrError(f"{fingerprint_path}: not valid JSON (run dvc repro weights)") from None
    stale = f"{key}: {path or chr(34) * 2} changed since the weights stage ran; run dvc repro"
    if not isinstance(record, dict) or record.get("key") != key:
        raise BnrError(f"{fingerprint_path}: not the fingerprint of {key}; run dvc repro")
    if record.get("file") != (path or None):
        raise BnrError(f"{stale} (the fingerprint names {record.get('file')})")
    if not path:
        return
    if not Path(path).is_file():
        raise BnrError(f"{key}: {path} not found; run dvc repro")
    if Path(path).stat().st_size != record.get("bytes"):
        raise BnrError(f"{stale} (size differs)")
    if cached_sha256(path, fingerprint_path.parent / CACHE_NAME) != record.get("sha256"):
        raise BnrError(f"{stale} (sha256 differs)")
