"""The mutation list of scripts/mutation_checks.py still points at code that exists: each
mutation's text occurs exactly once in its file (a refactor that moves it must update the list)."""

from __future__ import annotations

import importlib.util
import sys

from tests.conftest import REPO


def _module():
    spec = importlib.util.spec_from_file_location("mutation_checks",
                                                  REPO / "scripts" / "mutation_checks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def test_every_mutation_text_occurs_once() -> None:
    module = _module()
    assert module.check_texts() == []
    assert len(module.MUTATIONS) == 7  # the issue-29 list; add, do not drop


def test_a_stale_text_is_reported(tmp_path) -> None:
    module = _module()
    for m in module.MUTATIONS:
        (tmp_path / m.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / m.path).write_text("nothing here\n")
    assert len(module.check_texts(tmp_path)) == len(module.MUTATIONS)
