"""Resumable, checksum-verified file downloads (urllib only, no extra dependencies).

``download_file`` streams into ``<dest>.part``, resumes an interrupted transfer with an HTTP
``Range`` request (and restarts from zero when a server ignores ``Range`` and answers 200),
retries with exponential backoff, verifies the checksum and only then renames the file onto
``dest``. So ``dest`` exists only when it is complete (and verified, when a checksum is known).
Every failure a user can hit is a one-line :class:`~bnr.errors.BnrError` naming the URL or file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from bnr.data.pins import apply_pin, settle_unpinned
from bnr.data.sources import Source, check_checksum_format
from bnr.data.transfer import CHUNK, copy_local, download_http
from bnr.errors import BnrError

log = logging.getLogger(__name__)


def file_digest(path: str | os.PathLike[str], algo: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _checksum_ok(digests: dict[str, str], md5: str | None, sha256: str | None) -> bool:
    if md5 is not None and digests["md5"] != md5.lower():
        return False
    return sha256 is None or digests["sha256"].startswith(sha256.lower())


def _describe_mismatch(digests: dict[str, str], md5: str | None, sha256: str | None) -> str:
    parts = []
    if md5 is not None and digests["md5"] != md5.lower():
        parts.append(f"expected md5 {md5.lower()}, got {digests['md5']}")
    if sha256 is not None and not digests["sha256"].startswith(sha256.lower()):
        kind = "sha256" if len(sha256) == 64 else "sha256 prefix"
        parts.append(f"expected {kind} {sha256.lower()}, got {digests['sha256']}")
    return "; ".join(parts)


def _set_aside(path: Path, dest: Path, digests: dict[str, str], sha256: str | None) -> Path:
    """Rename a bad file to ``<dest>.corrupt-<actual sum>`` and return the new path."""
    actual = digests["sha256"] if sha256 is not None else digests["md5"]
    aside = dest.with_name(f"{dest.name}.corrupt-{actual}")
    os.replace(path, aside)
    return aside


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    md5: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    allow_unverified: bool = False,
) -> Path:
    """Download ``url`` to ``dest`` (http, https or file) and verify it; return ``dest``.

    ``md5`` is a full hex digest; ``sha256`` is a full digest or a prefix of at least 8 hex
    digits (verified as a prefix). A ``dest`` that already exists is kept when it verifies (or
    when no checksum is given, since ``dest`` only ever appears complete); one that fails is set
    aside as ``<dest>.corrupt-<sum>`` and downloaded again. ``retries`` counts consecutive
    attempts that made no progress; each waits ``backoff * 2**k`` seconds (capped at 60 s).
    ``size`` (expected bytes, optional) is used for the free-space check and the progress bar.
    No checksum: the first length-checked download pins its sha256 (:mod:`bnr.data.pins`), one
    of unknown length is refused unless ``allow_unverified``. ``sleep``: waits (tests inject).
    """
    dest = Path(dest)
    md5 = check_checksum_format(md5, "md5", where=url)
    sha256 = check_checksum_format(sha256, "sha256", where=url)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise BnrError(
            f"{url}: unsupported URL scheme {scheme or '(none)'!r} (use http, https or file)"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    sha256, size = apply_pin(dest, md5, sha256, size)  # no published checksum: the pinned one

    if dest.exists():
        if md5 is None and sha256 is None:
            log.info("%s: already present, no checksum to verify", dest)
            return dest
        digests = {algo: file_digest(dest, algo) for algo in ("md5", "sha256")}
        if _checksum_ok(digests, md5, sha256):
            log.info("%s: already present and verified", dest)
            return dest
        aside = _set_aside(dest, dest, digests, sha256)
        log.warning(
            "%s: existing file fails its checksum (%s); kept as %s, downloading again",
            dest,
            _describe_mismatch(digests, md5, sha256),
            aside.name,
        )

    part = dest.with_name(dest.name + ".part")
    if scheme == "file":
        digests, total = copy_local(url, part, progress=progress)
    else:
        digests, total = download_http(
            url,
            part,
            size=size,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            progress=progress,
            sleep=sleep,
        )
    if not _checksum_ok(digests, md5, sha256):
        aside = _set_aside(part, dest, digests, sha256)
        raise BnrError(
            f"{url}: checksum mismatch ({_describe_mismatch(digests, md5, sha256)}); "
            f"the downloaded file is kept as {aside}"
        )
    if md5 is None and sha256 is None:
        settle_unpinned(url, dest, part, digests["sha256"], total, allow_unverified)
    os.replace(part, dest)
    return dest


def fetch_source(
    source: Source,
    download_dir: str | os.PathLike[str],
    *,
    require_checksum: bool = False,
    progress: bool = True,
    **kwargs: object,
) -> Path:
    """Download one :class:`~bnr.data.sources.Source` into ``download_dir/<filename>``.

    With ``require_checksum`` a source without a known checksum is refused before anything is
    downloaded (set ``sources.<name>.sha256`` in params); otherwise it is downloaded unverified
    and its computed sha256 is logged.
    """
    if require_checksum and source.md5 is None and source.sha256 is None:
        raise BnrError(
            f"sources.{source.name}: no checksum known for {source.url}; set sources."
            f"{source.name}.sha256 (or md5) in params, or allow unverified downloads"
        )
    return download_file(
        source.url,
        Path(download_dir) / source.filename,
        md5=source.md5,
        sha256=source.sha256,
        size=source.size,
        progress=progress,
        **kwargs,  # type: ignore[arg-type]
    )
