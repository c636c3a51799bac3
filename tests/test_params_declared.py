"""Each stage's ``params:`` in dvc.yaml are exactly the keys its code reads (the companion of
``tests/test_stage_deps.py`` for code): a key a stage reads but does not declare would be
invisible to ``dvc status``, a key it declares but never reads re-runs it for nothing.

What the code reads is ``tests/params_reads.json``, recorded from a real ``dvc repro`` of the
tiny configuration (``python scripts/params_reads.py --write``; ``bnr/pipeline/declared.py`` logs
every read). The slow end-to-end test records its own repro and checks that this file is current.
"""

from __future__ import annotations

import json

from bnr.pipeline.declared import UNDECLARED_BY_DESIGN, declared_params
from tests.conftest import REPO

READS = json.loads((REPO / "tests" / "params_reads.json").read_text())
RUNTIME_DECLARED = ("runtime.device", "runtime.precision")  # what the outputs depend on
# Declared keys the recorded (synthetic, default-switch) run does not read, and why.
READ_ON_OTHER_PATHS = {
    ("evaluate", "crf"): "the label CRF of the predictions: evaluate.crf_form: label",
}


def _covers(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer + ".")


def _stages() -> dict[str, dict]:
    from bnr.config.yaml_load import load_yaml

    return load_yaml(REPO / "dvc.yaml")["stages"]


def _reads(stage: str) -> list[str]:
    """The recorded keys, and ``dataset`` where the stage's cmd names ``${dataset}`` (its paths
    follow the key: DVC re-runs it when the key changes)."""
    cmd_reads = ["dataset"] if "${dataset}" in _stages()[stage]["cmd"] else []
    return READS.get(stage, []) + cmd_reads


def test_every_stage_was_recorded() -> None:
    missing = [s for s in _stages() if s not in READS and declared_params(s, REPO / "dvc.yaml")]
    assert not missing, f"no recorded reads for {missing}: python scripts/params_reads.py --write"


def test_every_read_key_is_declared() -> None:
    problems = []
    for stage, reads in READS.items():
        declared = declared_params(stage, REPO / "dvc.yaml") or []
        for key in reads:
            if key.split(".")[0] in UNDECLARED_BY_DESIGN:
                continue
            if not any(_covers(d, key) for d in declared):
                problems.append(f"{stage} reads {key} but does not declare it")
    assert not problems, "\n".join(problems)


def test_every_declared_key_is_read() -> None:
    problems = []
    for stage in _stages():
        reads = _reads(stage)
        for key in declared_params(stage, REPO / "dvc.yaml") or []:
            if key.split(".")[0] in UNDECLARED_BY_DESIGN or (stage, key) in READ_ON_OTHER_PATHS:
                continue
            if not any(_covers(key, r) or _covers(r, key) for r in reads):
                problems.append(f"{stage} declares {key} but does not read it")
    assert not problems, "\n".join(problems)


def test_stages_that_read_runtime_declare_device_and_precision() -> None:
    """``-S runtime.device=cpu`` must mark every stage whose outputs the device changes (with
    ``precision: auto`` it changes the precision itself)."""
    for stage, reads in READS.items():
        declared = declared_params(stage, REPO / "dvc.yaml") or []
        runs_network = any(_covers("runtime", r) for r in reads)
        for key in RUNTIME_DECLARED:
            assert (key in declared) == runs_network, (stage, key)


def test_allowances_are_still_needed() -> None:
    for (stage, key), why in READ_ON_OTHER_PATHS.items():
        assert key in (declared_params(stage, REPO / "dvc.yaml") or []), (stage, key, why)
        assert not any(_covers(key, r) for r in READS.get(stage, [])), (stage, key, why)
