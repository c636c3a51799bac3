"""The metrics DVC compares hold only numbers; each has its protocol file beside it.

Static checks of dvc.yaml and the stage scripts (every declared metrics file is written by
``write_metrics`` with its ``.protocol.json`` sibling, an output of the same stage), the helper
itself, and the value count of the committed default-pipeline metrics (at most about 40).
"""

import json
import re
from pathlib import Path

import pytest
import yaml

from bnr.errors import BnrError
from bnr.pipeline.metrics_files import count_values, protocol_path, read_protocol, write_metrics
from tests.conftest import REPO

MAX_VALUES = 40  # issue 16: the declared metrics of the default pipeline, all files together
STEP_MIOUS = {"metrics/seeds.json": ["miou"],
              "metrics/pseudo_labels.json": ["miou_random_walk", "miou_crf"],
              "metrics/segmentation.json": ["miou"]}


def load_dvc_yaml(repo: Path = REPO) -> dict:
    return yaml.safe_load((repo / "dvc.yaml").read_text())


def declared_metrics(repo: Path = REPO) -> list[str]:
    """The metrics files of dvc.yaml, top-level and per stage, in the order DVC shows them."""
    spec = load_dvc_yaml(repo)
    paths = []
    for stage in spec["stages"].values():
        for entry in stage.get("metrics", []):
            paths.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths + list(spec.get("metrics", []))


def _outs(stage: dict) -> dict[str, dict]:
    out = {}
    for entry in stage.get("outs", []) + stage.get("plots", []):
        if isinstance(entry, dict):
            (path, opts), = entry.items()
            out[path] = opts or {}
        else:
            out[entry] = {}
    return out


def _plot_files(spec: dict) -> set[str]:
    files = set()
    for entry in spec.get("plots", []):
        (name, opts), = entry.items() if isinstance(entry, dict) else ((entry, None),)
        files.update(opts["y"] if isinstance((opts or {}).get("y"), dict) else [name])
    return files


def test_metrics_are_top_level_step_mious_first() -> None:
    spec = load_dvc_yaml()
    assert not [name for name, st in spec["stages"].items() if "metrics" in st]
    metrics = declared_metrics()
    assert metrics[:3] == list(STEP_MIOUS)  # first columns of dvc exp show / metrics diff
    assert "metrics/dataset.json" not in metrics
    assert not [m for m in metrics if m.endswith(".protocol.json")]
    assert not _plot_files(spec) & {str(protocol_path(m)) for m in metrics}


def test_every_metrics_file_is_written_with_its_protocol_by_one_stage() -> None:
    spec = load_dvc_yaml()
    for metrics in declared_metrics():
        sibling = str(protocol_path(metrics))
        owners = [name for name, st in spec["stages"].items() if metrics in _outs(st)]
        assert len(owners) == 1, (metrics, owners)
        outs = _outs(spec["stages"][owners[0]])
        assert outs[metrics].get("cache") is False and outs[sibling].get("cache") is False
        assert f"--metrics {metrics}" in spec["stages"][owners[0]]["cmd"], owners[0]
        step = (REPO / "bnr" / "steps" / f"{owners[0]}.py").read_text()
        assert "write_metrics(outputs.metrics," in step, owners[0]
    for path in (REPO / "bnr" / "steps").glob("*.py"):
        text = path.read_text()
        assert '"protocol":' not in text and "per_class_iou" not in text, path.name
        assert text.count("write_metrics(") <= 1, path.name  # one metrics file per stage


def test_per_class_iou_are_bar_charts() -> None:
    spec = load_dvc_yaml()
    bars = {next(iter(opts["y"])): opts for entry in spec.get("plots", [])
            for opts in entry.values() if isinstance(opts, dict)
            and opts.get("template") == "bar_horizontal"}
    for step in ("seeds", "pseudo_labels", "segmentation"):
        opts = bars[f"metrics/{step}_per_class.csv"]
        assert next(iter(opts["y"].values())) == "class"
    assert "dataset.json" not in json.dumps(spec.get("plots", []))


def test_write_metrics_writes_numbers_and_protocol(tmp_path: Path) -> None:
    path = tmp_path / "m" / "seeds.json"
    write_metrics(path, {"miou": 6.2, "loss": {"cls": 0.3, "nan": float("nan")}, "images": 4},
                  {"split": "train", "scales": [1.0]})
    assert json.loads(path.read_text()) == {"miou": 6.2, "loss": {"cls": 0.3, "nan": None},
                                           "images": 4}
    assert protocol_path(path) == tmp_path / "m" / "seeds.protocol.json"
    assert read_protocol(path) == {"split": "train", "scales": [1.0]}
    assert count_values(json.loads(path.read_text())) == 3  # the null is not shown
    assert sorted(p.name for p in path.parent.iterdir()) == ["seeds.json", "seeds.protocol.json"]


@pytest.mark.parametrize("numbers, words", [
    ({"split": "train"}, "split is str"),
    ({"loss": {"flag": True}}, "loss.flag is bool"),
    ({"scales": [1, 2]}, "scales is list"),
    ({}, "non-empty dict"),
])
def test_write_metrics_refuses_non_numbers(tmp_path: Path, numbers, words) -> None:
    with pytest.raises(TypeError, match=re.escape(words)):
        write_metrics(tmp_path / "x.json", numbers, {})
    assert not list(tmp_path.iterdir())


def test_read_protocol_errors(tmp_path: Path) -> None:
    with pytest.raises(BnrError, match=r"x\.protocol\.json: not found"):
        read_protocol(tmp_path / "x.json")
    (tmp_path / "x.protocol.json").write_text("[1]")
    with pytest.raises(BnrError, match="expected a JSON object, got list"):
        read_protocol(tmp_path / "x.json")


def test_count_values_counts_what_dvc_shows() -> None:
    from dvc.repo.metrics.show import _extract_metrics

    def leaves(obj) -> int:
        return sum(leaves(v) for v in obj.values()) if isinstance(obj, dict) else 1

    data = {"a": 1, "b": {"c": 2.5, "d": None, "e": [1, 2], "f": "text", "g": True},
            "h": {}, "i": {"j": {"k": 0}}}
    assert count_values(data) == leaves(_extract_metrics(data, "x")) == 5


def check_metrics_layout(repo: Path) -> int:
    """Every declared metrics file of ``repo`` exists with its protocol sibling and holds only
    numbers; the step mIoUs are there. Returns the number of values DVC shows for them all."""
    total = 0
    for rel in declared_metrics(repo):
        data = json.loads((repo / rel).read_text())
        assert protocol_path(repo / rel).is_file(), f"{rel}: no protocol file beside it"
        assert "protocol" not in data and "per_class_iou" not in data, rel
        assert isinstance(read_protocol(repo / rel).get("params"), dict), rel
        for key in STEP_MIOUS.get(rel, []):
            assert 0 <= data[key] <= 100, (rel, key)
        total += count_values(data)
    return total


def test_committed_default_metrics_hold_few_values() -> None:
    """The committed metrics of the default pipeline (`dvc repro` re-writes them)."""
    total = check_metrics_layout(REPO)
    assert 10 <= total <= MAX_VALUES, total
