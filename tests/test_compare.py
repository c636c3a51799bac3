"""``bnr compare-metrics``: figures within tolerance pass, each one outside is named, exit 1."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bnr.cli import main
from bnr.pipeline.compare import (
    TOLERANCES_FILE,
    Tolerances,
    compare_numbers,
    field_kind,
    load_tolerances,
)

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


@pytest.fixture
def flat(tmp_path: Path) -> list[str]:
    """``--tolerances`` of a file with the defaults only (1.5 mIoU points, 0.1, 10 %)."""
    path = tmp_path / "flat.yaml"
    path.write_text("defaults:\n  miou: {allowed: 1.5, from: flat}\n")
    return ["--tolerances", str(path)]


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
def test_within_tolerance_passes(tmp_path: Path, capsys, split_protocol: bool, flat) -> None:
    committed = _write(tmp_path / "committed", COMMITTED)
    fresh = _write(tmp_path / "metrics", _fresh(
        seeds={"miou": 7.5, "best_threshold": 0.55},  # +1.344 mIoU points
        pseudo_labels={"miou_crf": 2.5, "all_background_images": 4, "crf_seconds": 99.0},
        train_segmenter={"final_loss": 1.70, "seconds_this_run": 500.0}),
        split_protocol=split_protocol)
    code = main(["compare-metrics", "--against", str(committed), "--metrics", str(fresh), *flat])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "outside tolerance" not in out and "11 of 11 figures within tolerance" in out
    assert "seconds" not in out and "per_class" not in out and "protocol" not in out


def test_outside_tolerance_names_each_figure(tmp_path: Path, capsys, flat) -> None:
    committed = _write(tmp_path / "committed", COMMITTED, split_protocol=True)
    fresh = _write(tmp_path / "metrics", _fresh(
        segmentation={"miou": 3.91}, pseudo_labels={"miou_random_walk": 2.4},
        train_segmenter={"iterations": 599}))
    code = main(["compare-metrics", "--against", str(committed), "--metrics", str(fresh), *flat])
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


def test_against_a_git_revision(tmp_path: Path, capsys, flat) -> None:
    repo = tmp_path / "repo"
    _write(repo / "metrics", COMMITTED)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "metrics"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "metrics"], check=True)
    _write(repo / "metrics", _fresh(seeds={"miou": 4.0}))  # the fresh run overwrites them
    code = main(["compare-metrics", "--against", "HEAD", "--metrics", str(repo / "metrics"),
                 *flat])
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


# The committed run (AVX-512 kernels) and a correct run under the AVX2 emulation, seed 0, as
# bnr/pipeline/tolerances.yaml records them.
AVX512 = {"seeds.json": {"miou": 32.815, "best_threshold": 0.92, "images": 1000},
          "pseudo_labels.json": {"miou_random_walk": 28.946, "miou_crf": 30.384,
                                 "images_evaluated": 1000, "all_background_images": 547},
          "segmentation.json": {"miou": 13.499, "images": 200}}
AVX2 = {"seeds.json": {"miou": 26.63}, "pseudo_labels.json": {
    "miou_random_walk": 20.31, "miou_crf": 21.05, "all_background_images": 704},
    "segmentation.json": {"miou": 13.50}}


def _merge(base: dict, changes: dict) -> dict:
    return {name: {**data, **changes.get(name, {})} for name, data in base.items()}


def _seed_miou(cams: np.ndarray, gt: np.ndarray) -> float:
    """Seed mIoU (%) of (K, H, W) CAMs of classes 1..K against ``gt`` at threshold 0.5, with
    the pipeline's own seed rule and confusion matrix."""
    from bnr.cam.maps import cams_to_seeds
    from bnr.metrics import confusion_matrix, mean_iou

    seeds = cams_to_seeds(cams, list(range(1, len(cams) + 1)), 0.5)
    return 100 * float(mean_iou(confusion_matrix(seeds, gt, len(cams) + 1)))


def test_the_tolerances_pass_another_cpu_and_fail_a_broken_stage(tmp_path: Path,
                                                                 capsys) -> None:
    """A correct run under the AVX2 emulation is within every stated tolerance; seeds from a
    shuffled CAM (a real defect: the CAM no longer belongs to its pixels) are not."""
    committed = _write(tmp_path / "committed", AVX512)
    fresh = _write(tmp_path / "avx2", _merge(AVX512, AVX2))
    assert main(["compare-metrics", "--against", str(committed), "--metrics", str(fresh)]) == 0
    out = capsys.readouterr().out
    assert "9 of 9 figures within tolerance" in out and "AVX2 vs AVX-512 -6.2" in out
    # the broken stage: the same CAMs, their pixels shuffled, scored like eval_seeds does
    rng = np.random.default_rng(0)
    gt = np.zeros((64, 64), np.int64)
    gt[8:30, 8:30], gt[36:60, 30:60] = 1, 2
    cams = np.stack([(gt == k).astype(np.float32) for k in (1, 2)])
    cams = np.clip(cams * 0.7 + rng.random(cams.shape, np.float32) * 0.4, 0, 1)
    good, broken = _seed_miou(cams, gt), _seed_miou(
        cams.reshape(2, -1)[:, rng.permutation(64 * 64)].reshape(cams.shape), gt)
    drop = good - broken
    fresh = _write(tmp_path / "broken", _merge(AVX512, {"seeds.json": {
        "miou": AVX512["seeds.json"]["miou"] * broken / good}}))
    code = main(["compare-metrics", "--against", str(committed), "--metrics", str(fresh)])
    out = capsys.readouterr().out
    assert drop > 30 and code == 1, (good, broken, out)
    assert "outside tolerance: seeds.json miou" in out


def test_tolerance_file_rows_and_bad_files(tmp_path: Path) -> None:
    from bnr.errors import BnrError
    from bnr.pipeline.compare import tolerance_rows, with_overrides

    tol = load_tolerances(TOLERANCES_FILE)
    assert tol.figures["seeds.json:miou"][0] >= 6.2  # at least the measured AVX2 difference
    rows = tolerance_rows(tol)
    assert rows[0][0] == "`seeds.json:miou`" and rows[-1][0] == "any other `relative` figure"
    wide = with_overrides(tol, miou=3.0)
    assert "seeds.json:miou" not in wide.figures and "seeds.json:best_threshold" in wide.figures
    bad = tmp_path / "bad.yaml"
    bad.write_text("figures:\n  seeds.json:miou: {allowed: x}\n")
    with pytest.raises(BnrError, match="numeric 'allowed' and a 'from'"):
        load_tolerances(bad)
