"""The one YAML loader of params.yaml and dvc.yaml: DVC's own (ruamel.yaml, ``typ="safe"``,
YAML 1.2), so a value means here what it means to ``dvc status`` and ``dvc exp run -S``
(``lr: 1e-3`` is the number 0.001, ``flip: yes`` the string ``'yes'``).

Stricter than a plain load, each problem one short line naming the file and line:

- a key given twice in one mapping is an error (not the last value silently);
- aliases may not expand to more than :data:`MAX_VALUES` values (an alias bomb is refused
  before it is expanded: the composed tree keeps each anchor once);
- not UTF-8, or not YAML, names the byte offset or the line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from bnr.errors import BnrError

MAX_VALUES = 100_000  # scalars, lists and mappings of the expanded document (params.yaml: ~400)
MAX_PROBLEM_CHARS = 120


def _line(exc: MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    return f" at line {mark.line + 1}" if mark is not None else ""


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_PROBLEM_CHARS else text[:MAX_PROBLEM_CHARS] + "..."


def expanded_size(node: Node, limit: int = MAX_VALUES, name: str = "YAML") -> int:
    """How many values ``node`` stands for once every alias is expanded (counted with each
    shared node sized once, so a bomb costs its number of anchors, not its expansion); a
    recursive alias is a BnrError."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(n: Node) -> int:
        if id(n) in open_nodes:
            mark = n.start_mark
            raise BnrError(f"{name}: a recursive alias at line {mark.line + 1} (a value "
                           "that contains itself)")
        if id(n) in sizes:
            return sizes[id(n)]
        open_nodes.add(id(n))
        if isinstance(n, MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        elif isinstance(n, SequenceNode):
            total = 1 + sum(size(v) for v in n.value)
        else:
            total = 1
        open_nodes.discard(id(n))
        sizes[id(n)] = min(total, limit + 1)
        return sizes[id(n)]

    return size(node)


def parse_yaml_text(text: str, name: str) -> Any:
    """The document of ``text`` (file ``name`` in messages), as DVC reads it; None if empty."""
    yaml = YAML(typ="safe")
    try:
        node = yaml.compose(text)
        if node is None:
            return None
        if expanded_size(node, name=name) > MAX_VALUES:
            raise BnrError(f"{name}: its aliases (*name) expand to more than {MAX_VALUES} "
                           "values; write the values out instead")
        return yaml.constructor.construct_document(node)  # what YAML.load builds from it
    except DuplicateKeyError as exc:
        key = _short(str(exc.problem).split('"')[1] if '"' in str(exc.problem) else exc.problem)
        raise BnrError(f"{name}: key {key!r} is given twice in one mapping{_line(exc)} "
                       "(keep one)") from None
    except MarkedYAMLError as exc:
        raise BnrError(f"{name}: not valid YAML{_line(exc)} ({_short(exc.problem)})") from None
    except (YAMLError, RecursionError) as exc:
        raise BnrError(f"{name}: not valid YAML ({_short(exc)})") from None


def load_yaml(path: str | os.PathLike[str], what: str = "YAML file") -> Any:
    """Read and parse ``path`` (a one-line BnrError when missing, not UTF-8 or not YAML)."""
    path = Path(path)
    if not path.is_file():
        raise BnrError(f"{path}: {what} not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BnrError(f"{path}: {what} is not UTF-8 text (byte {data[exc.start]:#04x} at "
                       f"offset {exc.start})") from None
    return parse_yaml_text(text, str(path))
