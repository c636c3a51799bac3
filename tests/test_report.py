"""metrics/report.md from fake metrics files and a fake ``dvc exp show --json`` (no dvc run);
the report's charts."""

import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from bnr.errors import BnrError
from bnr.pipeline.metrics_files import write_metrics
from bnr.pipeline.report import build_report, chain_table, verdict
from bnr.pipeline.report_experiments import arms_table, dvc_experiments, experiment_rows
from bnr.pipeline.report_provenance import provenance_section, tree_state


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


def paths_of(folder: Path) -> dict[str, Path]:
    """The report stage's inputs under ``folder`` (the names of its dvc.yaml cmd)."""
    return {"seeds": folder / "seeds.json", "pseudo_labels": folder / "pseudo_labels.json",
            "segmentation": folder / "segmentation.json",
            "seeds_per_class": folder / "seeds_per_class.csv",
            "pseudo_labels_per_class": folder / "pseudo_labels_per_class.csv",
            "segmentation_per_class": folder / "segmentation_per_class.csv",
            "random_walk": folder / "random_walk.json",
            "fully_supervised": folder / "fully_supervised.json"}


def row_of(text: str, start: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {start}"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_voc_report_next_to_paper(tmp_path: Path) -> None:
    folder = fake_metrics(tmp_path / "metrics")
    text = build_report("voc2012", paths_of(folder), folder / "report.md", None, FAKE_EXP)
    seeds = row_of(text, "Seeds")
    assert seeds[1] == "train" and seeds[3] == "65.0" and seeds[-3:] == ["64.9", "66.2", "-1.2"]
    assert row_of(text, "After random walk + CRF")[-3:] == ["70.2", "71.3", "-0.3"]
    assert row_of(text, "After random walk |")[-3:] == ["-", "-", "-"]
    val = row_of(text, "Segmenter on")
    assert val[1] == "val" and val[-3:] == ["69.3", "70.5", "-0.5"]
    assert "scale only" not in text and "change from the step" not in text
    assert any("test" in line and "71.1" in line for line in text.splitlines())
    assert "- `segmentation.json` (`segmentation.protocol.json`): dataset=voc2012, split=val" \
        in text and "scales=[1.0]" in text
    assert "| train_cam |" not in text  # no stage metrics given: no provenance rows for them
    assert "| exp-seed1 | voc2012 | bnr | 1.0 | 1 | 62.0 | - | - | 69.0 |" in text
    lines = text.splitlines()
    x1 = next(line for line in lines if line.startswith("| BNR x1 |"))
    assert "| 0,1,2 | 62.0 ± 1.0 (3) | - | - | 70.2 ± 1.3 (3) |" in x1
    x2 = next(line for line in lines if line.startswith("| BNR x2 |"))
    assert "| 0,1 | 62.5 ± 0.7 (2) | - | - | 62.0 ± 2.8 (2) |" in x2
    assert "exp-queued" not in text and "exp-failed" not in text
    assert "(2 queued, running or failed experiments left out.)" in text


def test_synthetic_report_missing_files_and_notes(tmp_path: Path) -> None:
    table = chain_table("coco2014", [{"key": "seeds", "label": "Seeds", "split": "train",
                                      "setting": "-", "ours": "47.0", "value": 47.0,
                                      "all_background": "-", "verdict": "v"}])
    assert "| 46.2 | 47.4 | -0.4 |" in table
    folder = fake_metrics(tmp_path / "m", segmentation=False)
    (folder / "pseudo_labels.protocol.json").unlink()
    text = build_report("synthetic", paths_of(folder), folder / "report.md", None, None,
                        "`dvc exp show --json` failed (exit 1: boom)")
    assert "The paper has no number for the synthetic dataset" in text
    assert "paper TransCAM, VOC 2012 (scale only)" in text and "no paper number" not in text
    assert "segmentation.json not found" in text
    assert "Note: `dvc exp show --json` failed (exit 1: boom)." in text
    assert "pseudo_labels.protocol.json: not found" in text
    assert "| Fully supervised" not in text  # no fully_supervised.json: no row


def write_per_class(folder: Path) -> None:
    (folder / "seeds_per_class.csv").write_text(
        "class,iou,gt_pixels,pred_pixels\nbackground,90.0,10,10\ndisc,36.0,5,5\n"
        "star,0.1,5,5\nmIoU,42.0,20,20\n")
    (folder / "pseudo_labels_per_class.csv").write_text(
        "class,seeds,random_walk,crf,gt_pixels,crf_pred_pixels\n"
        "background,90.0,91.0,92.0,10,10\ndisc,36.0,45.0,52.0,5,5\nstar,0.1,0.0,0.0,5,0\n")
    (folder / "segmentation_per_class.csv").write_text(
        "class,iou,gt_pixels,pred_pixels\nbackground,94.5,10,20\ndisc,0.0,5,0\n"
        "star,0.0,5,0\nmIoU,31.5,20,20\n")


def test_chain_rows_verdicts_per_class_and_all_background(tmp_path: Path) -> None:
    folder = fake_metrics(tmp_path / "m")
    write_metrics(folder / "seeds.json", {"miou": 42.0, "best_threshold": 0.92},
                  {"split": "train", "thresholds": [0.0, 0.99, 0.01], "sweep_note": "x"})
    write_metrics(folder / "random_walk.json", {"images": 12, "all_background": 3},
                  {"split": "train"})
    write_metrics(folder / "pseudo_labels.json", {"miou_random_walk": 45.3, "miou_crf": 48.0,
                                                  "all_background_images": 7,
                                                  "images_evaluated": 12},
                  {"split": "train", "bg_score": 0.92, "walk_background": "seed_threshold",
                   "walk_scale": 4, "crf": {"iterations": 10}})
    write_per_class(folder)
    text = build_report("synthetic", paths_of(folder), folder / "report.md")
    seeds = row_of(text, "Seeds")
    assert "background threshold 0.92 (best of 0.00..0.99" in seeds[2]
    assert seeds[5] == ("finds 1 of 2 object classes (IoU ≥ 20); best disc 36.0; near-empty "
                        "(IoU < 5): star 0.1")
    walk = row_of(text, "After random walk |")
    assert walk[2] == "walk background score 0.92 (the seed threshold), image and CAMs 4x"
    assert walk[4] == "3 of 12"
    crf = row_of(text, "After random walk + CRF")
    assert crf[2] == "CRF, 10 iterations" and crf[4] == "7 of 12"
    val = row_of(text, "Segmenter on")
    assert val[4] == "all 2" or val[4].startswith("all")
    assert val[5] == "predicts background everywhere (no object pixel predicted)"
    assert row_of(text, "disc")[1:5] == ["36.0", "45.0", "52.0", "0.0"]
    assert "**warning: x**" in text


@pytest.mark.parametrize("ious, predicted, words", [
    ({"background": 94.5, "a": 0.0, "b": 0.0}, {"a": 0, "b": 0}, "background everywhere"),
    ({"background": 94.5, "a": 0.0, "b": 0.0}, {"a": 3, "b": 0}, "every object class IoU is 0"),
    ({"background": 90.0, "a": 25.0, "b": 4.0}, None, "finds 1 of 2 object classes"),
    ({"background": 90.0}, None, "no per-class IoUs"),
])
def test_verdict(ious, predicted, words) -> None:
    assert words in verdict(ious, predicted)


def test_fully_supervised_row(tmp_path: Path) -> None:
    folder = fake_metrics(tmp_path / "m")
    write_per_class(folder)
    runs = [{"seed": s, "miou": m, "per_class": {"background": 95.0, "disc": d, "star": 10.0}}
            for s, m, d in ((0, 60.0, 70.0), (1, 62.0, 74.0))]
    (folder / "fully_supervised.json").write_text(json.dumps(
        {"split": "val", "miou_mean": 61.0, "miou_std": 1.4142, "runs": runs,
         "note": "same segmenter, ground-truth masks"}))
    text = build_report("synthetic", paths_of(folder), folder / "report.md")
    row = row_of(text, "Fully supervised (segmenter on ground truth)")
    assert row[1] == "val" and row[3] == "61.0 ± 1.4 (n=2)"
    assert "trained on ground-truth masks; seeds 0, 1" in row[2]
    assert row_of(text, "disc")[-1] == "72.0"  # the per-class column: mean over the runs
    assert "Fully supervised: same segmenter, ground-truth masks" in text
    (folder / "fully_supervised.json").write_text(json.dumps({"split": "val"}))
    with pytest.raises(BnrError, match="fully_supervised.json: no 'miou_mean'"):
        build_report("synthetic", paths_of(folder), folder / "report.md")


def test_provenance_rows(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    git = {"commit": "0123456789abcdef", "dirty": True, "changed": ["dvc.lock", "metrics/a"]}
    env = {"cpu": "AMD EPYC 9B14", "cpu_capability": "AVX2", "torch_threads": 2}
    write_metrics(folder / "train_cam.json", {"seconds_this_run": 372.4},
                  {"git": git, "env": env, "date": "2026-12-07T00:00:00+00:00"})
    write_metrics(folder / "seeds.json", {"miou": 30.0},
                  {"git": {**git, "changed": ["bnr/x.py"]}, "env": env})
    lines = provenance_section({"train_cam": folder / "train_cam.json",
                                "seeds": folder / "seeds.json"}, {})
    text = "\n".join(lines)
    assert ("| train_cam | 372.4 | 2 | AMD EPYC 9B14 | AVX2 | 0123456 | clean code (only "
            "pipeline outputs changed) | 2026-12-07T00:00:00+00:00 |") in text
    assert "| eval_seeds | - | 2 |" in text and "dirty: bnr/x.py" in text
    assert "eval_seeds not timed" in text
    assert tree_state({"commit": "a", "dirty": False}) == "clean"
    assert tree_state({"commit": "a", "dirty": True}) == "dirty (files not recorded)"


def test_figures_are_drawn_and_linked(tmp_path: Path) -> None:
    folder = fake_metrics(tmp_path / "metrics")
    (folder / "seeds_threshold.csv").write_text("threshold,miou\n0.0,5.0\n0.5,20.0\n0.9,30.0\n")
    curves = folder / "train_cam" / "plots" / "metrics" / "train"
    curves.mkdir(parents=True)
    for name, values in (("loss", (1.0, 0.5)), ("loss_cls", (0.6, 0.3)), ("lr", (1e-3, 1e-3))):
        (curves / f"{name}.tsv").write_text(f"step\t{name}\n" + "".join(
            f"{10 * (i + 1)}\t{v}\n" for i, v in enumerate(values)))
    overlays = folder / "overlays" / "seeds"
    overlays.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(overlays / "a.png")
    paths = {**paths_of(folder), "threshold_curve": folder / "seeds_threshold.csv",
             "cam_curves": curves.parent, "seed_overlays": overlays}
    text = build_report("synthetic", paths, folder / "report.md", folder / "report_figures")
    for name in ("seeds_threshold", "train_cam_losses", "learning_rates"):
        assert f"(report_figures/{name}.png)" in text
        assert Image.open(folder / "report_figures" / f"{name}.png").size == (560, 320)
    assert "![Seeds (train) a](overlays/seeds/a.png)" in text
    assert sorted(p.name for p in curves.iterdir()) == ["loss.tsv", "loss_cls.tsv", "lr.tsv"]


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
    import bnr.steps.report

    monkeypatch.setattr(bnr.steps.report, "dvc_experiments", lambda timeout: (FAKE_EXP, ""))
    run_step("report", tiny_params(tmp_path))
    text = (tmp_path / "metrics" / "report.md").read_text()
    assert text.startswith("# bnr report: synthetic") and "| BNR x1 |" in text
    assert "| Fully supervised" not in text


def test_bnr_experiments_command(tmp_path: Path, monkeypatch) -> None:
    import bnr.pipeline.report_experiments
    from bnr.cli import main

    monkeypatch.setattr(bnr.pipeline.report_experiments, "dvc_experiments",
                        lambda: (FAKE_EXP, ""))
    assert main(["experiments", "--out", str(tmp_path / "e.md")]) == 0
    text = (tmp_path / "e.md").read_text()
    assert text.startswith("# bnr experiments") and "mean ± std" in text
    monkeypatch.setattr(bnr.pipeline.report_experiments, "dvc_experiments",
                        lambda: (None, "dvc missing"))
    assert main(["experiments"]) == 1


def test_chart_axis_labels_and_missing_columns(tmp_path: Path) -> None:
    from bnr.pipeline import charts

    assert charts.tick_label(0.001) == "1e-03"  # never "0"
    assert charts.tick_label(0.25) == "0.25"
    assert charts.ticks(0.0, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    flat = charts.Chart("flat", "step", "lr", (charts.Series("lr", ((1, 1e-3), (2, 1e-3))),),
                        log_y=True)
    assert charts.render(flat).size == (charts.WIDTH, charts.HEIGHT)
    (tmp_path / "a.csv").write_text("x,y\n1,2\n")
    with pytest.raises(BnrError, match="no column 'threshold'"):
        charts.read_columns(tmp_path / "a.csv", "threshold")
    with pytest.raises(BnrError, match="no points"):
        charts.render(charts.Chart("empty", "x", "y", (charts.Series("s", ()),)))


def test_overlay_panels_carry_titles_and_a_legend() -> None:
    import numpy as np

    from bnr.pipeline.visualize import SEGMENTATION_TITLES, colorize_labels, titled_panel

    label = np.zeros((32, 40), np.uint8)
    label[8:16, 8:16] = 2
    tiles = [np.full((32, 40, 3), 128, np.uint8), colorize_labels(label), colorize_labels(label)]
    out = titled_panel(tiles, SEGMENTATION_TITLES, ["background", "a", "b"])
    plain_width = 3 * 40 + 2 * 2
    assert out.shape[1] == plain_width and out.shape[0] > 32 + 16
    assert (out[:16] < 100).any()  # title text above the tiles
    legend = out[16 + 32:].reshape(-1, 3)
    assert (legend == colorize_labels(np.array([[2]]))[0, 0]).all(axis=1).any()  # class b
    with pytest.raises(ValueError, match="3 tiles but 2 titles"):
        titled_panel(tiles, SEGMENTATION_TITLES[:2], ["background"])


def test_dvc_plots_are_curated() -> None:
    """`dvc plots show` on the committed metrics: one plot per question, no dvclive counters,
    the losses of a stage together, the learning rates on a log axis (.dvc/plots/log_y.json)."""
    import os
    import sys

    from tests.conftest import REPO

    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    done = subprocess.run(["dvc", "plots", "show", "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    plots = json.loads(done.stdout)
    assert not plots.get("errors")
    vega = [n for n, items in plots["data"].items() if items[0]["type"] == "vega"]
    assert len(vega) == 9 and not [n for n in vega if "/" in n or ".tsv" in n], vega
    rates = plots["data"]["Learning rate per training stage (log scale)"][0]["content"]
    assert rates["encoding"]["y"]["scale"]["type"] == "log"
    losses = plots["data"]["train_cam: training losses (L = L_cls + L_M**)"][0]["content"]
    assert len(losses["encoding"]["strokeDash"]["scale"]["domain"]) == 3
