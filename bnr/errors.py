"""The one exception type every stage turns into a clear one-line message."""

from __future__ import annotations

import re

# How torch re-raises an exception of a DataLoader worker: the type rebuilt from one string
# holding "Caught <Type> in DataLoader worker process N.\nOriginal Traceback ...\n<path.Type>: msg".
_WORKER_RERAISE = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")
_LAST_LINE = re.compile(r"^[\w.]+: (.*)$")


def _unwrap_worker_message(message: str) -> str:
    """The original one-line message of a BnrError re-raised by a DataLoader worker."""
    if not _WORKER_RERAISE.match(message):
        return message
    lines = [line for line in message.splitlines() if line.strip()]
    found = _LAST_LINE.match(lines[-1]) if lines else None
    return found.group(1) if found else message


class BnrError(Exception):
    """A user-facing error: bad input, bad params, missing file.

    The message is one line and names the file (or params key) and the problem. Stages catch it
    and print ``error: <message>`` with exit code 1 instead of a traceback. Raised in a data
    loader worker, it keeps its own message (not the worker's traceback torch wraps it in).
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(_unwrap_worker_message(str(message)).split()))
