"""A stage reads only the params its dvc.yaml entry declares, or it stops.

DVC re-runs a stage when a param it *declares* changes; a param a stage reads without declaring
it would leave stale results cached. :func:`declared_view` wraps :class:`bnr.config.params.Params`
so that reading an undeclared key raises one line naming the stage and the key, and
``protocol()`` records exactly the declared params. ``run_stage`` applies it to every stage
started from a directory whose ``dvc.yaml`` has the stage (so ``dvc repro`` always runs guarded).

Keys are dvc.yaml's: ``datasets.${dataset}.train_cam.crop_size`` is
``params.per_dataset.train_cam.crop_size`` and ``datasets.${dataset}.data.root`` is
``params.data.root``; a declared block (``train_cam``) allows all of it. ``runtime`` keys other
than ``precision`` and ``device`` (with ``precision: auto`` the device decides the precision)
say how a stage runs, not what it computes, and are deliberately not declared (see
docs/paper-configuration.md, "Devices, precision and several GPUs");
``tests/test_params_declared.py`` checks that a stage that reads ``runtime`` declares those two.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from bnr.config.yaml_load import load_yaml
from bnr.errors import BnrError

UNDECLARED_BY_DESIGN = ("runtime",)  # how a stage runs (device, threads, processes)
RECORD_ENV = "BNR_PARAMS_RECORD"  # a file: log every key read, allow undeclared ones (dev aid)


def declared_params(stage: str, dvc_yaml: str | os.PathLike[str] = "dvc.yaml") -> list[str] | None:
    """The param keys ``stage`` declares in ``dvc_yaml`` (``${dataset}`` kept); None if absent."""
    path = Path(dvc_yaml)
    if not path.is_file():
        return None
    stages = (load_yaml(path) or {}).get("stages") or {}
    if stage not in stages:
        return None
    keys: list[str] = []
    for entry in stages[stage].get("params") or []:
        keys.extend([entry] if isinstance(entry, str) else [k for v in entry.values() for k in v])
    return keys


PREFIX = "datasets.${dataset}"


def _normalise(key: str) -> list[str]:
    """dvc.yaml's key -> the attribute paths on Params: ``datasets.${dataset}.data.x`` ->
    ``data.x``, ``datasets.${dataset}.train_cam.x`` -> ``per_dataset.train_cam.x``."""
    if key == PREFIX:
        return ["data", "per_dataset"]
    if key.startswith(PREFIX + ".data"):
        return [key[len(PREFIX) + 1:]]
    if key.startswith(PREFIX + "."):
        return ["per_dataset" + key[len(PREFIX):]]
    return [key]


def _shown(key: str) -> str:
    """An attribute path in dvc.yaml's spelling (the reverse of :func:`_normalise`)."""
    for head in ("data", "per_dataset"):
        if key == head or key.startswith(head + "."):
            rest = key[len(head):] if head == "per_dataset" else "." + key
            return PREFIX + rest
    return key


def _dig(value: Any, parts: list[str]) -> Any:
    for part in parts:
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


def _put(out: dict, parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        out = out.setdefault(part, {})
    out[parts[-1]] = value


class _Declared:
    """Attribute access on a params object, checked against the declared key paths."""

    def __init__(self, obj: Any, path: str, allowed: frozenset[str], stage: str) -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_allowed", allowed)
        object.__setattr__(self, "_stage", stage)

    def _check(self, key: str) -> str:
        """'whole' (key or a parent declared), 'part' (a child declared) or 'none'."""
        if any(key == a or key.startswith(a + ".") for a in self._allowed):
            return "whole"
        if key.split(".")[0] in UNDECLARED_BY_DESIGN:
            return "whole"
        if any(a.startswith(key + ".") for a in self._allowed):
            return "part"
        return "none"

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._obj, name)
        if name.startswith("_"):
            return value
        if self._path == "" and name == "protocol":
            return self.protocol
        key = f"{self._path}.{name}" if self._path else name
        if key == "data.name":  # the dataset block's own name is the `dataset` key
            key = "dataset"
        state = self._check(key)
        record = os.environ.get(RECORD_ENV)
        if record:
            with open(record, "a") as fh:
                fh.write(f"{self._stage} {key} {state}\n")
        if state == "whole":
            return value
        if dataclasses.is_dataclass(value):  # a block: its leaves are checked when read
            return _Declared(value, key, self._allowed, self._stage)
        if record:
            return value
        raise BnrError(f"dvc.yaml: stage {self._stage} reads param {_shown(key)} but does not "
                       "declare it (add it to the stage's params)")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("params are read-only")

    def protocol(self) -> dict:
        """The declared params with their values (what this stage's results depend on)."""
        full = self._obj.protocol()
        out: dict[str, Any] = {}
        for key in sorted(self._allowed):
            parts = key.split(".")
            if parts[0] in full:
                value = _dig(full, parts)
            elif parts[0] in UNDECLARED_BY_DESIGN or not hasattr(self._obj, parts[0]):
                continue
            else:
                value = _dig(self._obj, parts)
                value = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
                value = list(value) if isinstance(value, tuple) else value
                out[key] = value  # a stage block's key, under its dotted name
                continue
            _put(out, parts, value)
        return out


def declared_view(params: Any, stage: str, keys: list[str]) -> Any:
    """``params`` as seen by ``stage``, which declares ``keys`` (dvc.yaml spelling)."""
    return _Declared(params, "", frozenset(a for k in keys for a in _normalise(k)), stage)
