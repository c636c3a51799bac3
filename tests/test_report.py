"""metrics/report.md from fake metrics files and a fake ``dvc exp show --json`` (no dvc run)."""

import json
import subprocess
from pathlib import Path

import pytest

from bnr.pipeline.metrics_files import write_metrics
from bnr.pipeline.report import (
    arms_table,
    build_report,
    dvc_experiments,
    experiment_rows,
    step_metrics_files,
    step_table,
)


def fake_metrics(folder: Path, segmentation: bool = True) -> Path:
    """Step metrics files with their protocol files, as the stages write them."""
    proto = {"dataset": "voc2012", "split": "train", "ground_truth": "SegmentationClass",
             "method": "bnr", "noise_scale": 1.0, "seed": 0, "crf": False,
             "git": {"commit": "abcdef0123456789", "dirty": False}}
    write_metrics(folder / "seeds.json", {"miou": 65.0}, proto)
    write_metrics(folder / "pseudo_labels.json",
                  {"miou_random_walk": 69.5, "miou_crf": 71.0}, proto)
    if segmentation:
        write_metrics(folder / "segmentation.json", {"miou": 70.0},
                      {**proto, "split": "val", "scales": [1.0], "flip": True})
    return folder


def _exp(name: str | None, seed: int, seg: float | None, noise_scale: float = 1.0) -> dict:
    metrics = {"metrics/seeds.json": {"data": {"miou": 60.0 + seed + noise_scale}}}
    if seg is None:
        metrics["metrics/segmentation.json"] = {"error": {"type": "FileNotFoundError"}}
    else:
        metrics["metrics/segmentation.json"] = {"data": {"miou": seg}}
    return {"rev": f"{seed:040d}", "name": name, "data": {
        "params": {"params.yaml": {"data": {"dataset": "voc2012", "method": "bnr",
                                            "noise_scale": noise_scale, "seed": seed,
                                            "crf": {"iterations": 10}}}},
        "metrics": metrics}}


FAKE_EXP = [
    {**_exp(None, 0, 70.0), "rev": "workspace", "experiments": None},
    {**_exp("main", 0, None), "experiments": [
        {"revs": [_exp("exp-seed1", 1, 69.0)], "executor": None},
        {"revs": [_exp("exp-seed2", 2, 71.5)],
         "executor": {"state": "success", "name": "dvc-task"}},
        {"revs": [_exp("exp-x2-seed0", 0, 60.0, noise_scale=2.0)]},
        {"revs": [_exp("exp-x2-seed1", 1, 64.0, noise_scale=2)]},  # -S noise_scale=2: an int
        {"revs": [_exp("exp-queued", 3, 99.0)], "executor": {"state": "queued"}},
        {"revs": [_exp("exp-failed", 4, 99.0)], "executor": {"state": "failed"}},
    ]},
]


def test_voc_report_next_to_paper(tmp_path: Path) -> None:
    text = build_report("voc2012", step_metrics_files(fake_metrics(tmp_path / "metrics")), FAKE_EXP)
    lines = text.splitlines()
    seeds = next(line for line in lines if line.startswith("| Seeds"))
    assert "| 65.0 | 64.9 | 66.2 | -1.2 |" in seeds
    crf = next(line for line in lines if line.startswith("| After random walk + CRF"))
    assert "| 71.0 | 70.2 | 71.3 | -0.3 |" in crf
    rw = next(line for line in lines if line.startswith("| After random walk |"))
    assert "| 69.5 | - | - | - |" in rw
    val = next(line for line in lines if line.startswith("| Segmentation, val"))
    assert "| 70.0 | 69.3 | 70.5 | -0.5 |" in val
    assert any("test" in line and "71.1" in line for line in lines)
    assert "split=val" in text and "scales=[1.0]" in text
    assert "- `segmentation.json` (`segmentation.protocol.json`): dataset=voc2012, split=val" \
        in text and "commit abcdef0" in text
    assert "| exp-seed1 | voc2012 | bnr | 1.0 | 1 | 62.0 | - | - | 69.0 |" in text
    assert "| exp-seed2 |" in text
    # arms: BNR x1 over seeds 0 (workspace; the commit row repeats it), 1, 2
    x1 = next(line for line in lines if line.startswith("| BNR x1 |"))
    assert "| 0,1,2 | 62.0 ± 1.0 (3) | - | - | 70.2 ± 1.3 (3) |" in x1
    x2 = next(line for line in lines if line.startswith("| BNR x2 |"))
    assert "| 0,1 | 62.5 ± 0.7 (2) | - | - | 62.0 ± 2.8 (2) |" in x2
    assert "exp-queued" not in text and "exp-failed" not in text
    assert "(2 queued, running or failed experiments left out.)" in text


def test_coco_and_synthetic(tmp_path: Path) -> None:
    table = step_table("coco2014", {"seeds.json": {"miou": 47.0}})
    assert "| 47.0 | 46.2 | 47.4 | -0.4 |" in table
    assert "45.9" in table
    folder = fake_metrics(tmp_path / "m", segmentation=False)
    (folder / "pseudo_labels.protocol.json").unlink()
    text = build_report("synthetic", step_metrics_files(folder), None,
                        "`dvc exp show --json` failed (exit 1: boom)")
    assert "The paper has no number for the synthetic dataset" in text
    assert "no paper number" in text
    assert "segmentation.json not found" in text
    assert "Note: `dvc exp show --json` failed (exit 1: boom)." in text
    assert "pseudo_labels.protocol.json: not found" in text


def test_synthetic_chain_next_to_the_papers_voc_chain(tmp_path: Path) -> None:
    table = step_table("synthetic", {"seeds.json": {"miou": 30.0},
                                     "pseudo_labels.json": {"miou_random_walk": 34.0,
                                                            "miou_crf": 33.5},
                                     "segmentation.json": {"miou": 31.0}})
    rows = table.splitlines()
    assert rows[2] == "| Seeds (CAM, best threshold) | 30.0 | - | 64.9 | 66.2 |"
    assert rows[3] == "| After random walk | 34.0 | +4.0 | - | - |"
    assert rows[4] == "| After random walk + CRF (paper: +PSA) | 33.5 | -0.5 | 70.2 | 71.3 |"
    assert rows[5] == "| Segmentation, val | 31.0 | -2.5 | 69.3 | 70.5 |"
    folder = tmp_path / "m"
    write_metrics(folder / "seeds.json", {"miou": 30.0},
                  {"dataset": "synthetic", "thresholds": [0.0, 0.99, 0.01],
                   "sweep_note": "the best threshold 0.99 is the end of the sweep"})
    text = build_report("synthetic", step_metrics_files(folder), None, "x")
    assert ("threshold sweep 0.00..0.99 step 0.01, **warning: the best threshold 0.99 is the "
            "end of the sweep**") in text


def test_experiment_rows_flatten() -> None:
    rows = experiment_rows(FAKE_EXP)
    assert [r["name"] for r in rows] == ["workspace", "main", "exp-seed1", "exp-seed2",
                                         "exp-x2-seed0", "exp-x2-seed1", "exp-queued",
                                         "exp-failed"]
    assert [r["state"] for r in rows][-3:] == ["success", "queued", "failed"]
    assert rows[1]["segmentation"] is None and rows[3]["segmentation"] == 71.5
    assert rows[0]["params"]["crf.iterations"] == 10
    assert experiment_rows({"unexpected": True}) == []


def test_arms_table_separates_other_params() -> None:
    rows = experiment_rows(FAKE_EXP)[:4]
    rows[3]["params"] = {**rows[3]["params"], "crf.iterations": 5}  # not a seed of the same arm
    table = arms_table(rows)
    assert "| BNR x1 | bnr | 1.0 | crf.iterations=10 | 0,1 | 61.5 ± 0.7 (2) |" in table
    assert "| BNR x1 | bnr | 1.0 | crf.iterations=5 | 2 | 63.0 (1) |" in table


@pytest.mark.parametrize("outcome, words", [
    (subprocess.CompletedProcess([], 1, "", "ERROR: not a dvc repository\n"),
     "failed (exit 1: ERROR: not a dvc repository)"),
    (subprocess.CompletedProcess([], 0, "not json", ""), "no valid JSON"),
    (FileNotFoundError("dvc"), "could not run"),
    (subprocess.TimeoutExpired("dvc", 1), "could not run"),
])
def test_dvc_failure_is_a_note(outcome, words) -> None:
    def runner(*args, **kwargs):
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    data, note = dvc_experiments(runner)
    assert data is None and words in note


def test_dvc_success_and_stage(tmp_path: Path, monkeypatch) -> None:
    def runner(*args, **kwargs):
        return subprocess.CompletedProcess([], 0, json.dumps(FAKE_EXP), "")

    data, note = dvc_experiments(runner)
    assert note == "" and data == FAKE_EXP

    from tests.conftest import run_step
    from tests.test_segmentation import tiny_params

    monkeypatch.chdir(tmp_path)
    fake_metrics(tmp_path / "metrics")
    import bnr.pipeline.report

    def no_dvc(*a, **k):  # the stage must not read experiments: DVC cannot see them as input
        raise AssertionError("the report stage ran dvc exp show")

    monkeypatch.setattr(bnr.pipeline.report, "dvc_experiments", no_dvc)
    run_step("report", tiny_params(tmp_path))
    text = (tmp_path / "metrics" / "report.md").read_text()
    assert text.startswith("# bnr report: synthetic") and "`bnr experiments" in text


def test_bnr_experiments_command(tmp_path: Path, monkeypatch) -> None:
    import bnr.pipeline.report
    from bnr.cli import main

    monkeypatch.setattr(bnr.pipeline.report, "dvc_experiments", lambda: (FAKE_EXP, ""))
    assert main(["experiments", "--out", str(tmp_path / "e.md")]) == 0
    text = (tmp_path / "e.md").read_text()
    assert text.startswith("# bnr experiments") and "mean ± std" in text
    monkeypatch.setattr(bnr.pipeline.report, "dvc_experiments", lambda: (None, "dvc missing"))
    assert main(["experiments"]) == 1
