"""The metrics files DVC compares, and the protocol file next to each.

A stage's metrics file (``metrics/<name>.json``, listed under ``metrics:`` in ``dvc.yaml``) holds
only the numbers a researcher compares across experiments: mIoU, best threshold, image counts,
losses, seconds. DVC shows every field of such a file as a column of ``dvc exp show`` and a row
of ``dvc metrics diff``, so how the numbers were obtained (split, scales, CRF, params, git commit,
library versions, ...) goes to ``metrics/<name>.protocol.json`` beside it: a plain output,
committed to git and never declared as a metric.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from numbers import Number
from pathlib import Path
from typing import Any

from bnr.errors import BnrError
from bnr.io import write_json

PROTOCOL_SUFFIX = ".protocol.json"


def protocol_path(metrics_path: str | os.PathLike[str]) -> Path:
    """``metrics/seeds.json`` -> ``metrics/seeds.protocol.json``."""
    path = Path(metrics_path)
    return path.with_name(path.stem + PROTOCOL_SUFFIX)


def _check_numbers(numbers: Any, where: str) -> None:
    """Every leaf a number (or None: NaN and not measured); nested dicts allowed, no lists or
    strings (DVC would show a string as a column and drop a list)."""
    if isinstance(numbers, Mapping):
        for key, value in numbers.items():
            _check_numbers(value, f"{where}.{key}" if where else str(key))
    elif numbers is not None and (isinstance(numbers, bool) or not isinstance(numbers, Number)):
        raise TypeError(f"metrics value {where or '<root>'} is {type(numbers).__name__}, "
                        "not a number: it belongs in the protocol")


def write_metrics(path: str | os.PathLike[str], numbers: Mapping[str, Any],
                  protocol: Mapping[str, Any]) -> None:
    """Write ``numbers`` to the metrics file ``path`` and ``protocol`` to its sibling
    :func:`protocol_path`, each atomically (the protocol first, so a metrics file is never newer
    than its protocol). ``numbers`` may nest dicts but holds only numbers (TypeError otherwise)."""
    if not isinstance(numbers, Mapping) or not numbers:
        raise TypeError(f"{path}: the metrics must be a non-empty dict of numbers")
    _check_numbers(numbers, "")
    write_json(protocol_path(path), dict(protocol))
    write_json(path, dict(numbers))


def read_protocol(metrics_path: str | os.PathLike[str]) -> dict:
    """The protocol recorded next to ``metrics_path``; BnrError naming the file if it is missing
    or not a JSON object."""
    path = protocol_path(metrics_path)
    if not path.is_file():
        raise BnrError(f"{path}: not found (the stage writing {Path(metrics_path).name} "
                       "writes it too; re-run that stage)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BnrError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BnrError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def count_values(data: Any) -> int:
    """The number of values DVC shows for a metrics file's content: every number, string and
    boolean at any depth of nested dicts (lists and nulls are not shown)."""
    if isinstance(data, Mapping):
        return sum(count_values(v) for v in data.values())
    return int(isinstance(data, (Number, str)))
