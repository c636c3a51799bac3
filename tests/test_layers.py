"""The layer rules of the architecture (DEVELOPERS.md), read from the imports with ``ast``:

* models know no data, no config, no step package (``bnr/cam``, ``bnr/affinity``,
  ``bnr/pseudo_labels``, ``bnr/segmenter``), no weights and none of the stage level
  (``bnr/pipeline``, ``bnr/steps``);
* data knows no config, no models and no step package; the class names need none of the dataset
  writers;
* config knows no step package, models, data, weights or stage level;
* the step packages and ``bnr/weights`` know no stage level (the steps call them, not the
  other way round); the affinity, pseudo-label and segmenter packages know no config (they take
  values);
* metrics know no model; nothing in ``bnr/`` imports a stage script;
* post-processing (CRF, random walk, affinity labels, test-time inference) takes the class count
  explicitly (no default class count);
* no library module is over 400 lines, except the model family files in ``bnr/models/``.

Function-level imports count as much as top-level ones (they still tie the modules together).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

BNR = REPO / "bnr"
MAX_LINES = 400


def imported_names(path: Path, root: Path = REPO) -> set[str]:
    """Every module name ``path`` imports anywhere: ``import a.b`` gives ``a.b``; ``from a.b
    import c`` gives ``a.b`` and ``a.b.c`` (``c`` may be a submodule). Relative imports are
    resolved against the file's package (its folder below ``root``)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def forbidden_imports(
    paths: list[Path], forbidden: tuple[str, ...], root: Path = REPO
) -> list[str]:
    """``"file: module"`` for each import of a module in (or under) ``forbidden``."""
    found = []
    for path in paths:
        for name in sorted(imported_names(path, root)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(root)}: {name}")
    return found


def files(pattern: str) -> list[Path]:
    out = sorted(BNR.glob(pattern))
    assert out, f"no files match bnr/{pattern}"
    return out


STEP_PACKAGES = ("bnr.cam", "bnr.affinity", "bnr.pseudo_labels", "bnr.segmenter")
STAGE_LEVEL = ("bnr.pipeline", "bnr.steps")

RULES = {
    "models know no data, config, step packages, weights, pipeline or steps": (
        "models/*.py",
        ("bnr.data", "bnr.config", *STEP_PACKAGES, "bnr.weights", *STAGE_LEVEL, "bnr.engine"),
    ),
    "data knows no config, no models and no step package": (
        "data/*.py", ("bnr.config", "bnr.models", *STEP_PACKAGES, "bnr.weights", *STAGE_LEVEL),
    ),
    "class names need no dataset writer": (
        "data/classes.py",
        ("bnr.data.synthetic", "bnr.data.coco", "bnr.data.voc_prepare"),
    ),
    "metrics know no model": (
        "metrics.py", ("bnr.models", *STEP_PACKAGES, "bnr.weights", "bnr.engine"),
    ),
    "config knows no step package, models, data, weights, pipeline or steps": (
        "config/*.py", (*STEP_PACKAGES, "bnr.models", "bnr.data", "bnr.weights", *STAGE_LEVEL),
    ),
    **{
        f"{package} knows no pipeline and no step": (f"{package[4:]}/*.py", STAGE_LEVEL)
        for package in (*STEP_PACKAGES, "bnr.weights")
    },
    **{  # they take values (the CAM's attention diagnostics tool reads params.yaml itself)
        f"{package} knows no config": (f"{package[4:]}/*.py", ("bnr.config",))
        for package in ("bnr.affinity", "bnr.pseudo_labels", "bnr.segmenter")
    },
    "nothing in bnr imports a stage": ("**/*.py", ("stages",)),
}


def test_rules_name_only_modules_that_exist() -> None:
    """A rule that forbids a module that is gone guards nothing (a rename must update it)."""
    for rule, (_, forbidden) in RULES.items():
        for name in forbidden:
            path = BNR.parent.joinpath(*name.split("."))
            assert path.with_suffix(".py").is_file() or path.is_dir(), (rule, name)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_layer_rule(rule: str) -> None:
    pattern, forbidden = RULES[rule]
    assert forbidden_imports(files(pattern), forbidden) == [], rule


def probe_file(tmp_path: Path, folder: str, text: str) -> Path:
    """``text`` as ``bnr/<folder>/probe.py`` below ``tmp_path``."""
    probe = tmp_path / "bnr" / folder / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(text)
    return probe


def test_the_rule_checker_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    probe = probe_file(tmp_path, "models", "import torch\n"
                       "def f():\n    from bnr.data.voc import read_split\n"
                       "from ..pseudo_labels import crf\nimport stages.crf\n")
    forbidden = ("bnr.data", "bnr.pseudo_labels", "stages")
    assert forbidden_imports([probe], forbidden, tmp_path) == [
        "bnr/models/probe.py: bnr.data.voc",
        "bnr/models/probe.py: bnr.data.voc.read_split",
        "bnr/models/probe.py: bnr.pseudo_labels",
        "bnr/models/probe.py: bnr.pseudo_labels.crf",
        "bnr/models/probe.py: stages.crf",
    ]


POST_PROCESSING = ("bnr.pseudo_labels.crf", "bnr.affinity.random_walk",
                   "bnr.affinity.affinity_labels", "bnr.segmenter.test_time")


def _public_postprocessing_functions() -> list:
    import importlib

    out = []
    for name in POST_PROCESSING:
        module = importlib.import_module(name)
        for fn_name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__ and not fn_name.startswith("_"):
                out.append(fn)
    return out


CLASS_COUNT_NAMES = ("n_labels", "num_classes", "n_classes")


def test_postprocessing_takes_the_class_count_explicitly() -> None:
    fns = _public_postprocessing_functions()
    with_count = [fn for fn in fns
                  if any(p in inspect.signature(fn).parameters for p in CLASS_COUNT_NAMES)]
    assert with_count, "no post-processing function takes a class count: the check is stale"
    defaults = [
        f"{fn.__module__}.{fn.__name__}({p.name}={p.default!r})"
        for fn in with_count
        for p in inspect.signature(fn).parameters.values()
        if p.name in CLASS_COUNT_NAMES and p.default not in (inspect.Parameter.empty, None)
    ]
    assert defaults == []


def test_no_library_module_over_400_lines() -> None:
    too_long = {
        str(path.relative_to(REPO)): n
        for path in files("**/*.py")
        if path.parent != BNR / "models"  # the model family files may be longer
        and (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert too_long == {}


def test_only_stage_scripts_import_a_step() -> None:
    """``bnr/steps/<stage>.py`` is a stage's work: stage scripts import it, nothing else in
    ``bnr`` does, and no step imports another (a stage's code deps stay its own)."""
    found = []
    for path in sorted(BNR.rglob("*.py")):
        names = imported_names(path)
        own = f"bnr.steps.{path.stem}"
        steps = {n for n in names if n.startswith("bnr.steps.") and n != own}
        if path.parent.name == "steps" and path.name == "__init__.py":
            steps = set()
        if steps:
            found.append(f"{path.relative_to(REPO)}: {sorted(steps)}")
    assert found == []
    for script in sorted((REPO / "stages").glob("*.py")):
        assert f"bnr.steps.{script.stem}" in imported_names(script), script.name


PARAMS_ALLOWED = ("config", "pipeline", "steps")  # the folders that turn params into values


def params_arguments(path: Path, root: Path = REPO) -> list[str]:
    """``"file:line function(argument)"`` for each function argument of ``path`` that takes the
    whole params: annotated ``Params`` (however spelt), or named ``params`` / ``cfg`` with no
    annotation or ``Any``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        args = node.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
            note = ast.unparse(arg.annotation) if arg.annotation is not None else None
            whole = note is not None and re.search(r"\bParams\b", note) is not None
            untyped = arg.arg in ("params", "cfg") and note in (None, "Any")
            if whole or untyped:
                name = getattr(node, "name", "lambda")
                found.append(f"{path.relative_to(root)}:{node.lineno} {name}({arg.arg})")
    return found


def test_only_config_pipeline_and_steps_take_params() -> None:
    """The library takes values: a step resolves the params it declared into plain arguments or
    frozen plans (``CamTrainingPlan``, ...); only ``bnr/config``, ``bnr/pipeline`` and
    ``bnr/steps`` have a function with a ``Params`` argument."""
    found = [hit for path in files("**/*.py")
             if path.relative_to(BNR).parts[0] not in PARAMS_ALLOWED
             for hit in params_arguments(path)]
    assert found == []


def test_the_params_check_sees_every_spelling(tmp_path: Path) -> None:
    probe = probe_file(tmp_path, "cam", "def a(params: Params) -> None: ...\n"
                       "def b(x: int, *, cfg: 'bnr.config.params.Params') -> None: ...\n"
                       "def c(params) -> None: ...\n"
                       "def d(weights: Mapping[str, int], plan: CamTrainingPlan) -> None: ...\n")
    assert params_arguments(probe, tmp_path) == [
        "bnr/cam/probe.py:1 a(params)", "bnr/cam/probe.py:2 b(cfg)", "bnr/cam/probe.py:3 c(params)"]
