"""The one checkpoint module: atomic save, ``torch.load`` of weights only (any failure as one
short line), strict loads that report missing / unexpected / mis-shaped keys once, and the
``meta`` check of bnr checkpoints.

On ``torch.load`` failures:

torch's own message for a refused or garbage file is several hundred characters and advises
loading with ``weights_only=False`` (which would execute code from the file); the line here
names the file and the first concrete reason only.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnr.errors import BnrError
from bnr.io import atomic_path

_MARKER = "WeightsUnpickler error:"
_BOILERPLATE = ("Weights only load failed", "Check the documentation", "Please file an issue")


def short_load_reason(exc: BaseException) -> str:
    """The first concrete reason of a ``torch.load`` failure, at most 120 characters, without
    torch's advice to disable ``weights_only``."""
    text = str(exc)
    if _MARKER in text:
        text = text.split(_MARKER, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()
             and "weights_only" not in line and not line.startswith(_BOILERPLATE)]
    reason = lines[0] if lines else ""
    reason = reason.split(". ")[0].split(" Please ")[0].rstrip(".")  # the first sentence
    if not reason or "weights_only" in reason:
        reason = type(exc).__name__
    elif isinstance(exc, KeyError):
        reason = f"KeyError {reason}"
    return reason[:120]


def load_weights_only(path: str | os.PathLike[str], what: str = "checkpoint",
                      mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a one-line BnrError naming ``path``
    when the file is missing, not a torch file, or holds anything but tensors and plain data.
    ``mmap``: the tensors stay in the file until read (a cheap look at the plain data)."""
    path = Path(path)
    if not path.is_file():
        raise BnrError(f"{path}: {what} not found")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols, naming weights_only
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True,
                              **({"mmap": True} if mmap else {}))
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle is a bad file
        raise BnrError(f"{path}: unreadable {what}: not a torch file of tensors "
                       f"({short_load_reason(exc)})") from None


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save ``state`` atomically (a kill mid-write leaves the previous checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _first(names: Iterable[str], limit: int = 4) -> str:
    names = list(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def key_mismatches(
    own: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    missing_name: Callable[[str], str] = str,
    unexpected_name: Callable[[str], str] = str,
) -> list[str]:
    """What keeps ``state`` from loading strictly into a model whose state dict is ``own``:
    ``["N missing keys: a, b", "N unexpected keys: ...", "N shape mismatches: k (file) vs
    model (shape)"]``, empty when it fits. ``*_name`` show a key as its file names it (a foreign
    layout's own spelling). The one strict-load report of every loader."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state)
                    if tuple(own[k].shape) != tuple(state[k].shape))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_first(map(missing_name, missing))}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: "
                     f"{_first(map(unexpected_name, unexpected))}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches: {_first(shapes)}")
    return parts


def load_state_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                      source: Path | str, what: str = "the model") -> None:
    """``load_state_dict(strict=True)``; any missing / unexpected / mis-shaped key is one line
    naming ``source`` (:func:`key_mismatches`)."""
    parts = key_mismatches(model.state_dict(), state_dict)
    if parts:
        raise BnrError(f"{source}: does not fit {what} ({'; '.join(parts)})")
    model.load_state_dict(state_dict, strict=True)


def load_checkpoint(path: Path, expected_meta: dict, mmap: bool = False) -> dict:
    """Load a checkpoint (weights_only) and check its ``meta`` matches ``expected_meta``;
    ``mmap``: its tensors are read only when used (to look at ``meta`` / ``protocol``)."""
    state = load_weights_only(path, mmap=mmap)
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise BnrError(f"{path}: not a bnr checkpoint (no 'model' and 'meta' entries)")
    for key, value in expected_meta.items():
        if state["meta"].get(key) != value:
            raise BnrError(
                f"{path}: checkpoint was made with {key}={state['meta'].get(key)!r}, "
                f"this run needs {key}={value!r}"
            )
    return state
