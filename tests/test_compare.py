"""``bnr compare-metrics``: figures within tolerance pass, each one outside is named, exit 1."""

import json
import subprocess
from pathlib import Path

import pytest

from bnr.cli import main
from bnr.pipeline.compare import Tolerances, compare_numbers, field_kind

COMMITTED = {
    "seeds.json": {"miou": 6.156, "best_threshold": 0.59,
                   "per_class_iou": {"background": 80.1, "disc": 3.2},
                   "protocol": {"dataset": "synthetic", "scales": [64, 128]}},
    "pseudo_labels.json": {"miou_seeds": 6.156, "miou_random_walk": 4.014, "miou_crf": 3.877,
                           "images_evaluated": 1000, "all_background_images": 2,
                           "crf_seconds": 21.6},
    "segmentation.json": {"miou": 6.873, "images": 200, "seconds": 2.0},
    "train_segmenter.json": {"final_loss": 1.594, "iterations": 600, "seconds_this_run": 67.6},
}


def _write(folder: Path, files: dict, split_protocol: bool = False) -> Path:
    """Metrics JSON files; ``split_protocol``: the other layout (protocol in a sibling
    ``<name>.protocol.json``, per-class dicts dropped)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        data = dict(data)
        if split_protocol:
            protocol = data.pop("protocol", {"dataset": "synthetic"})
            data.pop("per_class_iou", None)
            (folder / name.replace(".json", ".protocol.json")).write_text(json.dumps(protocol))
        (folder / name).write_text(json.dumps(data))
    return folder


def _fresh(**changes: dict) -> dict:
    """COMMITTED with some fields changed: ``_fresh(seeds={"miou": 3.9})``."""
    out = {name: dict(data) for name, data in COMMITTED.items()}
    for stem, fields in changes.items():
        out[f"{stem}.json"].update(fields)
    return out


@pytest.mark.parametrize("split_protocol", [False, True])
def test_within_tolerance_passes(tmp_path: Path, capsys, split_protocol: bool) -> None:
    committed = _write(tmp_path / "committed", COMMITTED)
    fresh = _write(tmp_path / "metrics", _fresh(
        seeds={"miou": 7.5, "best_threshold": 0.55},  # +1.344 mIoU points
        pseudo_labels={"miou_crf": 2.5, "all_background_images": 4, "crf_seconds": 99.0},
        train_segmenter={"final_loss": 1.70, "seconds_this_run": 500.0}),
        split_protocol=split_protocol)
    code = main(["compare-metrics", "--against", str(committed), "--metrics", str(fresh)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "outside tolerance" not in out and "11 of 11 figures within tolerance" in out
    assert "seconds" not in out and "per_class" not in out and "protocol" not in out


def test_outside_tolerance_names_each_figure(tmp_path: Path, capsys) -> None:
    committed = _write(tmp_path / "committed", COMMITTED, split_protocol=True)
    fresh = _write(tmp_path / "metrics", _fresh(
        segmentation={"miou": 3.91}, pseudo_labels={"miou_random_walk": 2.4},
        train_segmenter={"iterations": 599}))
    code = main(["compare-metrics", "--against", str(committed), "--metrics", str(fresh)])
    out = capsys.readouterr().out
    assert code == 1
    named = [line for line in out.splitlines() if line.startswith("outside tolerance:")]
    assert len(named) == 3
    assert "segmentation.json miou: committed 6.873, fresh 3.91" in named[1]
    assert "pseudo_labels.json miou_random_walk" in named[0]
    assert "train_segmenter.json iterations" in named[2]
    # a wider mIoU tolerance lets the mIoU figures through; the changed count still fails
    code = main(["compare-metrics", "--against", str(committed), "--metrics", str(fresh),
                 "--tolerance", "3"])
    out = capsys.readouterr().out
    assert code == 1 and out.count("outside tolerance:") == 1


def test_against_a_git_revision(tmp_path: Path, capsys) -> None:
    repo = tmp_path / "repo"
    _write(repo / "metrics", COMMITTED)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "metrics"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "metrics"], check=True)
    _write(repo / "metrics", _fresh(seeds={"miou": 4.0}))  # the fresh run overwrites them
    code = main(["compare-metrics", "--against", "HEAD", "--metrics", str(repo / "metrics")])
    out = capsys.readouterr().out
    assert code == 1
    assert "outside tolerance: seeds.json miou: committed 6.156, fresh 4" in out
    code = main(["compare-metrics", "--against", "no-such-rev",
                 "--metrics", str(repo / "metrics")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no-such-rev" in err
    assert main(["compare-metrics", "--metrics", str(repo / "metrics"), "--tolerance", "-1"]) == 2
    assert "--tolerance must be a number >= 0" in capsys.readouterr().err


def test_bad_json_is_one_line(tmp_path: Path, capsys) -> None:
    committed = _write(tmp_path / "committed", COMMITTED)
    fresh = _write(tmp_path / "metrics", COMMITTED)
    (fresh / "seeds.json").write_text("{not json")
    assert main(["compare-metrics", "--against", str(committed), "--metrics", str(fresh)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seeds.json" in err and "not valid JSON" in err


def test_field_kinds_and_allowed_differences() -> None:
    assert field_kind("miou_crf", 3.8) == "miou"
    assert field_kind("seconds_per_iteration", 0.1) is None
    assert field_kind("images_per_second", 26.5) is None
    assert field_kind("images", 1000) == "count"
    rows = compare_numbers("x.json", {"miou": 5.0, "final_loss": 2.0, "steps": 10},
                           {"miou": 6.5, "final_loss": 2.3, "steps": 10}, Tolerances())
    assert [(r.field, r.ok) for r in rows] == [("miou", True), ("final_loss", False),
                                               ("steps", True)]
