"""The building blocks of the params schema (:mod:`bnr.config.params`): value checks, field
declarations and the builder of a block from its mapping.

A check is ``check(key, value) -> value``: it returns the (possibly normalised) value or raises a
one-line :class:`ParamsError` naming the key, e.g.
``params.yaml: noise_scale must be a number >= 0, got 'abc'``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import field
from typing import Any

from bnr.errors import BnrError

Check = Callable[[str, Any], Any]


class ParamsError(BnrError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


INT64_MAX = 2**63 - 1  # every integer param ends up in a torch / numpy int64 (seeds included)
SHOWN_CHARS = 60  # a value longer than this is cut in error lines (an error is one short line)


def shown(value: Any) -> str:
    """``repr(value)``, cut to :data:`SHOWN_CHARS` characters (with its length)."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} chars)"


def _fail(key: str, must: str, value: Any) -> None:
    raise ParamsError(f"params.yaml: {key} must be {must}, got {shown(value)}")


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Check:
    """A finite real number, optionally bounded: ``lo <= x`` (or ``lo < x``) and ``x <= hi``
    (DVC writes ``-S key=1e400`` as ``.inf``: refused, as NaN is)."""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"<= {hi:g}")
    must = "a number" + (" " + " and ".join(parts) if parts else "")

    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(key, must, value)
        if not _finite(value):
            _fail(key, "a finite" + must[1:], value)
        if lo is not None and (value <= lo if lo_open else value < lo):
            _fail(key, must, value)
        if hi is not None and value > hi:
            _fail(key, must, value)
        return float(value)

    return check


def none_or_number(lo: float, hi: float, none_means: str) -> Check:
    """``none`` (a named off switch, e.g. "without noise") or a finite number ``lo < x <= hi``.

    The off switch is a word, not ``lo``, so that the setting has no jump at a number's end.
    """
    in_range = number(lo, hi, lo_open=True)

    def check(key: str, value: Any) -> str | float:
        if value == "none":
            return value
        try:
            return in_range(key, value)
        except ParamsError as exc:  # "... must be [a finite] number ..." names the word too
            raise ParamsError(str(exc).replace(" must be ", f" must be none ({none_means}) or ",
                                               1)) from None

    return check


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    """A whole number, optionally bounded (inclusive); always within int64 (torch's seeds and
    sizes), so ``hi`` defaults to 2**63 - 1."""
    parts = ([f">= {lo}"] if lo is not None else []) + (
        [f"<= {hi}"] if hi is not None else ["< 2**63"])
    must = "an integer " + " and ".join(parts)
    lo = -INT64_MAX - 1 if lo is None else lo
    hi = INT64_MAX if hi is None else hi

    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            _fail(key, must, value)
        return int(value)

    return check


def choice(*options: str) -> Check:
    """One of a fixed set of strings."""
    must = "one of " + ", ".join(options)

    def check(key: str, value: Any) -> str:
        if value not in options:
            _fail(key, must, value)
        return str(value)

    return check


def boolean() -> Check:
    def check(key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            _fail(key, "true or false", value)
        return value

    return check


def auto_or_integer(lo: int = 0, hi: int = 1024) -> Check:
    def check(key: str, value: Any) -> str | int:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            _fail(key, f"auto or an integer >= {lo} and <= {hi}", value)
        return int(value)

    return check


def auto_or_boolean() -> Check:
    def check(key: str, value: Any) -> str | bool:
        if value != "auto" and not isinstance(value, bool):
            _fail(key, "auto, true or false", value)
        return value

    return check


def string(allow_empty: bool = True) -> Check:
    def check(key: str, value: Any) -> str:
        if value is None and allow_empty:
            return ""
        if not isinstance(value, str) or (not allow_empty and not value):
            _fail(key, "a string" if allow_empty else "a non-empty string", value)
        return value

    return check


def number_list(
    item: Check, min_len: int = 1, max_len: int | None = None, ordered: bool = False
) -> Check:
    """A list of numbers, each checked by ``item``; ``ordered``: non-decreasing."""
    size = f"{min_len}" + (f" to {max_len}" if max_len != min_len else "")
    if max_len is None:
        size = f"at least {min_len}"

    def check(key: str, value: Any) -> tuple:
        if not isinstance(value, (list, tuple)):
            _fail(key, f"a list of {size} numbers", value)
        if len(value) < min_len or (max_len is not None and len(value) > max_len):
            _fail(key, f"a list of {size} numbers", value)
        out = tuple(item(f"{key}[{i}]", v) for i, v in enumerate(value))
        if ordered and any(a > b for a, b in itertools.pairwise(out)):
            _fail(key, "in non-decreasing order", value)
        return out

    return check


def mapping_of_strings() -> Check:
    def check(key: str, value: Any) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            _fail(key, "a mapping of names to strings", value)
        return dict(value)

    return check


def spec(check: Check, default: Any = dataclasses.MISSING) -> Any:
    """Declare a params field: its check, and a default (absent = the key is required)."""
    if default is dataclasses.MISSING:
        return field(metadata={"check": check})
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"check": check})
    return field(default=default, metadata={"check": check})


def build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from mapping ``data``; ``prefix`` names the block in messages."""
    if not isinstance(data, dict):
        raise ParamsError(f"params.yaml: {prefix} must be a mapping, got {shown(data)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - names)
    if unknown:
        raise ParamsError(f"params.yaml: unknown key {prefix}.{unknown[0][:SHOWN_CHARS]} "
                          f"(known: {', '.join(sorted(names))})")
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}"
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamsError(f"params.yaml: missing key {key}")
            continue
        if "nested" in f.metadata:
            values[f.name] = build(f.metadata["nested"], data[f.name], key)
        else:
            values[f.name] = f.metadata["check"](key, data[f.name])
    return cls(**values)


def nested(cls: type, required: bool = False) -> Any:
    """Declare a field holding a nested params block of dataclass ``cls`` (``required``: the
    block must be given; else missing means all its defaults)."""
    if required:
        return field(metadata={"nested": cls})
    return field(default_factory=cls, metadata={"nested": cls})
