"""dvc.yaml's code deps are exactly each stage's import closure, and stages read only the params
they declare (bnr.pipeline.declared)."""

import dataclasses
import os
import sys
from pathlib import Path

import pytest

from bnr.config.params import parse_params
from bnr.errors import BnrError
from bnr.pipeline.declared import declared_params, declared_view
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from stage_deps import expected_and_declared, import_closure  # noqa: E402


@pytest.mark.parametrize("stage", sorted(expected_and_declared()))
def test_code_deps_are_the_import_closure(stage):
    expected, declared = expected_and_declared()[stage]
    assert declared == expected, (
        f"dvc.yaml stage {stage}: code deps differ from its imports; "
        "`python scripts/stage_deps.py` prints the right list")


def test_closure_follows_function_level_and_package_imports(tmp_path):
    (tmp_path / "bnr" / "sub").mkdir(parents=True)
    (tmp_path / "bnr" / "__init__.py").write_text("")
    (tmp_path / "bnr" / "sub" / "__init__.py").write_text("")
    (tmp_path / "bnr" / "sub" / "a.py").write_text("def f():\n    from bnr.sub import b\n")
    (tmp_path / "bnr" / "sub" / "b.py").write_text("import os\n")
    (tmp_path / "bnr" / "c.py").write_text("x = 1\n")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "s.py").write_text("from bnr.sub.a import f\n")
    assert import_closure(tmp_path / "stages" / "s.py", tmp_path) == [
        "bnr/__init__.py", "bnr/sub/__init__.py", "bnr/sub/a.py", "bnr/sub/b.py", "stages/s.py"]


def _params():
    import yaml

    return parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))


def test_declared_view_allows_declared_and_refuses_the_rest():
    view = declared_view(_params(), "s", ["dataset", "datasets.${dataset}.train_cam.crop_size",
                                          "datasets.${dataset}.data.root",
                                          "datasets.${dataset}.infer_seeds", "crf"])
    assert view.per_dataset.train_cam.crop_size == 128 and view.crf.iterations == 10
    assert view.data.root == "data/synthetic" and view.per_dataset.infer_seeds.scales
    assert view.data.name == "synthetic"  # the block's name is the `dataset` key
    assert view.runtime.num_threads == 0  # runtime: undeclared by design
    with pytest.raises(BnrError, match=r"reads param datasets.\$\{dataset\}.train_cam.epochs"):
        _ = view.per_dataset.train_cam.epochs
    with pytest.raises(BnrError, match=r"reads param datasets.\$\{dataset\}.data.val_split"):
        _ = view.data.val_split
    with pytest.raises(BnrError, match="stage s reads param noise_scale"):
        _ = view.noise_scale
    block = view.train_cam  # an undeclared block can be passed on; reading a leaf stops
    with pytest.raises(BnrError, match="stage s reads param train_cam.adam_eps"):
        _ = block.adam_eps
    assert view.protocol() == {
        "dataset": "synthetic", "data": {"root": "data/synthetic"},
        "per_dataset": {"train_cam": {"crop_size": 128}, "infer_seeds": {"scales": (64, 128, 192)}},
        "crf": dataclasses.asdict(view.crf)}


def test_every_stage_declares_its_params_in_dvc_yaml():
    for stage in expected_and_declared():
        assert declared_params(stage, REPO / "dvc.yaml") is not None, stage
    assert declared_params("no_such_stage", REPO / "dvc.yaml") is None
    assert declared_params("x", Path("/nonexistent/dvc.yaml")) is None


def _stage_files(spec: dict, sections: tuple[str, ...]) -> set[str]:
    out = set()
    for section in sections:
        for entry in spec.get(section) or []:
            out.add(next(iter(entry)) if isinstance(entry, dict) else str(entry))
    return out


@pytest.mark.parametrize("stage", sorted(expected_and_declared()))
def test_stage_paths_come_from_its_cmd_and_match_deps_and_outs(stage):
    """Each path option of a stage's cmd is one of its deps (Inputs) or outs (Outputs; a
    metrics file's protocol and a per-class CSV's .md twin are outs too), and every out is
    one of them: the cmd is where a stage's paths are written."""
    import importlib

    import yaml

    from bnr.pipeline.metrics_files import protocol_path
    from bnr.pipeline.stage import output_paths, stage_paths

    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    step = importlib.import_module(f"bnr.steps.{stage}")
    inputs, outputs = stage_paths(step, REPO / "dvc.yaml")  # ${dataset} kept as written
    deps = _stage_files(spec, ("deps",))
    for f in dataclasses.fields(inputs):
        assert str(getattr(inputs, f.name)) in deps, (stage, f.name)
    written = {str(p) for p in output_paths(outputs)}
    if hasattr(outputs, "curves"):  # a dvclive folder: DVC plots its plots/metrics
        written = (written - {str(outputs.curves)}) | {f"{outputs.curves}/plots/metrics"}
    written |= {str(Path(p).with_suffix(".md")) for p in written if p.endswith("_per_class.csv")}
    outs = _stage_files(spec, ("outs", "metrics", "plots"))
    assert written == outs, (stage, sorted(written ^ outs))
    assert not any(str(protocol_path(p)) in deps for p in deps if p.startswith("metrics/")
                   and stage != "report")


def _bnr_import_after_path_insert(script: Path) -> bool:
    """Whether ``script`` puts its own checkout first on ``sys.path`` before importing bnr."""
    import ast

    inserted = False
    for node in ast.parse(script.read_text()).body:
        text = ast.unparse(node)
        if text.startswith("sys.path.insert(0, str(Path(__file__).resolve().parents[1]))"):
            inserted = True
        if isinstance(node, ast.ImportFrom | ast.Import) and "bnr" in text.split()[1]:
            return inserted
    return False


def test_every_stage_script_runs_the_bnr_of_its_own_checkout(tmp_path):
    """A DVC experiment runs ``python stages/<name>.py`` in a copy of the tree: the copy's bnr
    must run, not the installed (editable) bnr of the checkout it was installed from."""
    import shutil
    import subprocess

    scripts = sorted((REPO / "stages").glob("*.py"))
    assert scripts
    assert [s.name for s in scripts if not _bnr_import_after_path_insert(s)] == []
    shutil.copytree(REPO / "stages", tmp_path / "stages")
    shutil.copytree(REPO / "bnr", tmp_path / "bnr",
                    ignore=shutil.ignore_patterns("__pycache__"))
    stage_py = tmp_path / "bnr" / "pipeline" / "stage.py"
    stage_py.write_text("def stage_main(step):\n    print('ran', __file__)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(tmp_path / "stages" / "report.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"ran {stage_py}" in done.stdout
