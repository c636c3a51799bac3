"""A content manifest of the dataset root, so DVC sees what the stages read.

With ``download.existing_root`` the dataset root is a symlink to a folder outside the
workspace, and DVC records ``data/<dataset>`` as an empty folder: replacing an image re-ran
nothing. The ``manifest`` stage (``always_changed``) lists every file under the root (links
followed) with its size and sha256 in ``data/<dataset>.manifest.tsv``; the stages depend on that
file, so a changed image, mask or split list changes the manifest and re-runs them, and an
unchanged dataset writes the identical manifest and re-runs nothing.

Hashing is cached by ``(path, size, mtime_ns)`` in ``data/.manifest-cache/<dataset>.json``
(not tracked), so only new or touched files are read again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from bnr.errors import BnrError
from bnr.io import sha256_file, write_json, write_text

HEADER = "path\tsize\tsha256\n"


def _walk_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` (symlinks followed, each real folder once), sorted."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_file():
                yield path


def build_manifest(root: str | os.PathLike[str], cache_path: Path | None = None) -> str:
    """The manifest text of ``root``: a header, then ``relative path, size, sha256`` per file
    (sorted). ``cache_path``: JSON cache of earlier digests keyed by path, size and mtime."""
    root = Path(root)
    if not root.is_dir():
        raise BnrError(f"{root}: dataset root not found (run the download stage)")
    cache: dict = {}
    if cache_path is not None and cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text())
        except ValueError:
            cache = {}  # a damaged cache only costs re-hashing
    fresh: dict = {}
    lines = []
    for path in _walk_files(root):
        rel = path.relative_to(root).as_posix()
        if "\t" in rel or "\n" in rel:
            raise BnrError(f"{path}: file name with a tab or newline cannot be listed")
        st = path.stat()
        key = f"{rel}\t{st.st_size}\t{st.st_mtime_ns}"
        digest = cache.get(key) or sha256_file(path)
        fresh[key] = digest
        lines.append(f"{rel}\t{st.st_size}\t{digest}\n")
    if cache_path is not None and fresh != cache:
        write_json(cache_path, fresh)
    return HEADER + "".join(sorted(lines))


def write_manifest(root: str | os.PathLike[str], out: Path, cache_path: Path | None = None
                   ) -> int:
    """Write the manifest of ``root`` to ``out`` (atomically; untouched when unchanged, so its
    mtime says when the content last changed); returns the number of files listed."""
    text = build_manifest(root, cache_path)
    if not out.is_file() or out.read_text() != text:
        write_text(out, text)
    return text.count("\n") - 1
