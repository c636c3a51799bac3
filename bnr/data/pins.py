"""sha256 pins of downloads that have no published checksum.

The first download of such a file whose length was checked (a Content-Length, a 206 range, or a
known size) records its sha256 and size in ``<dest>.pin.json``; every later download or existing
copy of ``dest`` is verified against the pin, and a later response without a Content-Length is
checked against the pinned size. A response of unknown length with neither checksum nor pin
cannot be told from a truncated one: it is refused and discarded, unless the user opts in
(``download.allow_unverified``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bnr.data.sources import check_checksum_format
from bnr.errors import BnrError
from bnr.io import write_json

log = logging.getLogger(__name__)


def pin_path(dest: Path) -> Path:
    """The pin file of ``dest``."""
    return dest.with_name(dest.name + ".pin.json")


def read_pin(dest: Path) -> dict | None:
    """``{"sha256", "size"}`` pinned for ``dest``, or None; a damaged pin is a BnrError."""
    path = pin_path(dest)
    if not path.is_file():
        return None
    try:
        pin = json.loads(path.read_text())
        return {"sha256": check_checksum_format(pin["sha256"], "sha256", where=str(path)),
                "size": int(pin["size"])}
    except (ValueError, KeyError, TypeError):
        raise BnrError(f"{path}: damaged pin file (delete it to pin again)") from None


def apply_pin(dest: Path, md5: str | None, sha256: str | None, size: int | None
              ) -> tuple[str | None, int | None]:
    """``(sha256, size)`` to verify ``dest`` with: the pinned ones when no checksum is given."""
    pin = read_pin(dest) if md5 is None and sha256 is None else None
    if pin is None:
        return sha256, size
    return pin["sha256"], size or pin["size"]


def settle_unpinned(url: str, dest: Path, part: Path, sha256: str, checked_length: int | None,
                    allow_unverified: bool) -> None:
    """Accept (and pin) the unverified download ``part`` of ``dest``, or refuse it.

    ``checked_length``: the length the transfer was checked against (None: unknown)."""
    received = part.stat().st_size
    if checked_length is None and not allow_unverified:
        part.unlink(missing_ok=True)
        raise BnrError(
            f"{url}: no Content-Length, no known size and no checksum, so a truncated transfer "
            f"cannot be told from a complete one ({received:,} bytes received, discarded); give "
            "its sha256, or set download.allow_unverified: true"
        )
    if checked_length is None:
        log.warning("%s: no checksum and no length to check, accepted unverified (sha256 %s)",
                    dest, sha256)
        return
    write_json(pin_path(dest), {"url": url, "sha256": sha256, "size": received})
    log.warning("%s: no published checksum; its sha256 %s is pinned in %s", dest, sha256,
                pin_path(dest).name)
