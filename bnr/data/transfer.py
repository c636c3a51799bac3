"""The transfer behind :func:`bnr.data.download.download_file`: one URL streamed into a ``.part``
file while hashing it (md5 and sha256), with HTTP ``Range`` resume, retries with exponential
backoff, free-space checks and one-line errors for a full disk or a dropped connection. The
checksum verification and the rename onto the destination stay in :mod:`bnr.data.download`.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import re
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from bnr.errors import BnrError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "bnr-download/1.0 (+urllib)"
MAX_BACKOFF_S = 60.0
# HTTP statuses that will not change on a retry: fail at once.
_FATAL_STATUS = {400, 401, 403, 404, 405, 410, 451}
# Exceptions that mean "the connection broke mid-transfer": resume.
_DROPPED = (
    http.client.IncompleteRead,
    http.client.RemoteDisconnected,
    ConnectionError,
    TimeoutError,
    socket.timeout,
    http.client.HTTPException,
)


def _hash_file_into(path: Path, hashers: dict[str, hashlib._Hash]) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            for h in hashers.values():
                h.update(block)


def new_hashers() -> dict[str, hashlib._Hash]:
    """Fresh md5 and sha256 hashers, keyed by name."""
    return {"md5": hashlib.md5(usedforsecurity=False), "sha256": hashlib.sha256()}


def write_chunk(fh: BinaryIO, block: bytes) -> None:
    """Write one block (a separate function so tests can simulate a full disk)."""
    fh.write(block)


def _human(n: int | None) -> str:
    return "unknown" if n is None else f"{n:,}"


def _check_free_space(part: Path, need: int | None, url: str) -> None:
    if need is None or need <= 0:
        return
    free = shutil.disk_usage(part.parent).free
    if free < need:
        raise BnrError(
            f"{part.parent}: not enough free disk space for {url}: need {need:,} more bytes, "
            f"{free:,} free"
        )


def copy_local(url: str, part: Path, *, progress: bool) -> tuple[dict[str, str], int]:
    """Copy a file: URL into ``part`` while hashing it."""
    src = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    if not src.is_file():
        raise BnrError(f"{url}: local file {src} not found")
    total = src.stat().st_size
    _check_free_space(part, total, url)
    hashers = new_hashers()
    try:
        with (
            open(src, "rb") as fin,
            open(part, "wb") as fout,
            tqdm(
                total=total, unit="B", unit_scale=True, desc=part.name[:-5], disable=not progress
            ) as bar,
        ):
            for block in iter(lambda: fin.read(CHUNK), b""):
                write_chunk(fout, block)
                for h in hashers.values():
                    h.update(block)
                bar.update(len(block))
    except OSError as exc:
        _raise_disk_error(exc, part, url, None, total)
        raise BnrError(f"{url}: cannot copy {src} to {part} ({exc})") from None
    return {k: h.hexdigest() for k, h in hashers.items()}, total


def _raise_disk_error(
    exc: OSError, part: Path, url: str, done: int | None, total: int | None
) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise BnrError(
            f"{part}: disk full while downloading {url} ({_human(done)} of {_human(total)} bytes "
            "written); free some space and rerun, the partial file is kept and will resume"
        ) from None


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class _RetryableError(Exception):
    """Internal: this attempt failed in a way worth retrying (kind: unreachable/dropped/http)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class _Transfer:
    """The state of one download: the .part file, the running hashes and the sizes."""

    def __init__(self, url: str, part: Path, size: int | None, bar: tqdm) -> None:
        self.url = url
        self.part = part
        self.total = size
        self.bar = bar
        self.hashers = new_hashers()
        self.done = 0
        if part.exists():  # left by an earlier interrupted run: resume after it
            _hash_file_into(part, self.hashers)
            self.done = part.stat().st_size
            bar.update(self.done)
            log.info("%s: resuming after %s bytes", part, f"{self.done:,}")

    def restart(self) -> None:
        """Throw away the partial file and start again from byte 0."""
        self.part.unlink(missing_ok=True)
        self.hashers = new_hashers()
        self.done = 0
        self.bar.reset(total=self.total)

    def append(self, fh: BinaryIO, block: bytes) -> None:
        write_chunk(fh, block)
        for h in self.hashers.values():
            h.update(block)
        self.done += len(block)
        self.bar.update(len(block))

    def digests(self) -> dict[str, str]:
        return {k: h.hexdigest() for k, h in self.hashers.items()}


def download_http(
    url: str,
    part: Path,
    *,
    size: int | None,
    retries: int,
    backoff: float,
    timeout: float,
    progress: bool,
    sleep: Callable[[float], None],
) -> tuple[dict[str, str], int | None]:
    """Stream ``url`` into ``part`` with resume and retries; return its md5/sha256 digests and
    the length it was checked against (None: unknown, the server sent no length)."""
    failures = 0
    with tqdm(
        total=size, unit="B", unit_scale=True, desc=part.name[:-5], disable=not progress
    ) as bar:
        xfer = _Transfer(url, part, size, bar)
        while True:
            before = xfer.done
            try:
                _one_attempt(xfer, timeout)
                return xfer.digests(), xfer.total
            except _RetryableError as exc:
                progressed = xfer.done > before
                failures = 0 if progressed else failures + 1
                if failures > retries:
                    raise BnrError(_final_message(xfer, exc, retries)) from None
                if progressed:
                    log.warning("%s: %s; resuming at byte %s", url, exc.message, f"{xfer.done:,}")
                    continue
                wait = min(backoff * 2 ** (failures - 1), MAX_BACKOFF_S)
                log.warning(
                    "%s: %s; retry %d/%d in %.1f s", url, exc.message, failures, retries, wait
                )
                sleep(wait)


def _final_message(xfer: _Transfer, exc: _RetryableError, retries: int) -> str:
    attempts = f"{retries + 1} attempt{'s' if retries else ''}"
    if exc.kind == "unreachable":
        return f"{xfer.url}: {exc.message} after {attempts}; check the network or use a mirror"
    if exc.kind == "http":
        return f"{xfer.url}: {exc.message} after {attempts}"
    return (
        f"{xfer.url}: the server keeps dropping the connection ({exc.message}); got "
        f"{xfer.done:,} of {_human(xfer.total)} bytes after {attempts} without progress; "
        f"rerun to resume from {xfer.part}"
    )


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    value = resp.headers.get("Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _open(xfer: _Transfer, timeout: float) -> http.client.HTTPResponse | None:
    """Send the (ranged) request; None means the .part is already the whole file."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if xfer.done:
        headers["Range"] = f"bytes={xfer.done}-"
    req = urllib.request.Request(xfer.url, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and xfer.done:
            # Range not satisfiable: the .part is complete already, or longer than the file.
            m = re.search(r"/(\d+)", exc.headers.get("Content-Range", "") or "")
            if m and int(m.group(1)) == xfer.done:
                xfer.total = xfer.done
                return None
            xfer.restart()
            raise _RetryableError("dropped", "HTTP 416 on resume; restarting from zero") from None
        if exc.code in _FATAL_STATUS:
            raise BnrError(f"{xfer.url}: HTTP {exc.code} {exc.reason}") from None
        raise _RetryableError("http", f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        host = urllib.parse.urlsplit(xfer.url).netloc
        if xfer.done and isinstance(exc.reason, ConnectionError | TimeoutError):
            raise _RetryableError(
                "dropped", f"connection to {host} failed ({exc.reason})"
            ) from None
        raise _RetryableError("unreachable", f"cannot reach {host} ({exc.reason})") from None
    except _DROPPED as exc:
        kind = "dropped" if xfer.done else "unreachable"
        raise _RetryableError(
            kind, f"connection failed ({exc.__class__.__name__}: {exc})"
        ) from None


def _one_attempt(xfer: _Transfer, timeout: float) -> None:
    """One request; returns when ``xfer.part`` is complete. ``_RetryableError``: try again."""
    resp = _open(xfer, timeout)
    if resp is None:
        return
    with resp:
        length = _content_length(resp)
        if resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != xfer.done:
                xfer.restart()  # a range we did not ask for
                raise _RetryableError(
                    "dropped", "server answered a different byte range; restarting"
                )
            if m.group(3) != "*":
                xfer.total = int(m.group(3))
            mode = "ab"
        elif resp.status == 200:
            if xfer.done:
                log.warning("%s: server ignored the Range request; restarting from 0", xfer.url)
                xfer.restart()
            if length is not None:
                xfer.total = length
            mode = "wb"
        else:
            raise _RetryableError("http", f"unexpected HTTP status {resp.status}")
        if xfer.total is not None:
            xfer.bar.total = xfer.total
            xfer.bar.refresh()
            _check_free_space(xfer.part, xfer.total - xfer.done, xfer.url)
        try:
            with open(xfer.part, mode) as fh:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise _RetryableError(
                            "dropped", f"connection dropped ({exc.__class__.__name__})"
                        ) from None
                    if not block:
                        break
                    xfer.append(fh, block)
        except OSError as exc:
            _raise_disk_error(exc, xfer.part, xfer.url, xfer.done, xfer.total)
            raise BnrError(f"{xfer.part}: cannot write ({exc})") from None
    if xfer.total is not None and xfer.done < xfer.total:
        raise _RetryableError("dropped", f"connection closed early at byte {xfer.done:,}")
    if xfer.total is not None and xfer.done > xfer.total:
        raise BnrError(
            f"{xfer.url}: server sent {xfer.done:,} bytes, more than the {xfer.total:,} announced"
        )
