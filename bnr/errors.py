"""The one exception type every stage turns into a clear one-line message."""

from __future__ import annotations


class BnrError(Exception):
    """A user-facing error: bad input, bad params, missing file.

    The message is one line and names the file (or params key) and the problem. Stages catch it
    and print ``error: <message>`` with exit code 1 instead of a traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
