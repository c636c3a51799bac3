"""The fully supervised ceiling: recorded from experiments' files, refused when it is not one."""

import json

import pytest

from bnr.errors import BnrError
from bnr.pipeline.fully_supervised import FILES, record_runs

CSV = "class,iou,gt_pixels,pred_pixels\nbackground,97.5,10,10\ndisc,88.0,5,5\nmIoU,92.75,15,15\n"


def _files(seed, miou, trained_on="ground_truth", split="val"):
    protocol = {"seed": seed, "split": split, "segmenter_trained_on": trained_on,
                "git": {"commit": "abc", "dirty": False}}
    return dict(zip(FILES, (json.dumps({"miou": miou}), json.dumps(protocol), CSV),
                    strict=True))


def _reader(exps):
    return lambda ref, path: exps[ref][path]


def test_mean_std_and_per_class(tmp_path):
    exps = {"a": _files(0, 90.0), "b": _files(1, 92.0)}
    doc = record_runs(["b", "a"], tmp_path / "fs.json", read=_reader(exps))
    assert doc["miou_mean"] == 91.0 and doc["miou_std"] == pytest.approx(1.41, abs=0.01)
    assert [r["seed"] for r in doc["runs"]] == [0, 1]
    assert doc["runs"][0]["per_class"] == {"background": 97.5, "disc": 88.0}
    assert json.loads((tmp_path / "fs.json").read_text()) == doc


def test_a_pseudo_label_run_is_refused(tmp_path):
    exps = {"a": _files(0, 40.0, trained_on="pseudo")}
    with pytest.raises(BnrError, match="trained on 'pseudo', not ground_truth"):
        record_runs(["a"], tmp_path / "fs.json", read=_reader(exps))
    assert not (tmp_path / "fs.json").exists()


def test_mixed_splits_are_refused(tmp_path):
    exps = {"a": _files(0, 90.0), "b": _files(1, 90.0, split="train")}
    with pytest.raises(BnrError, match="different splits"):
        record_runs(["a", "b"], tmp_path / "fs.json", read=_reader(exps))


def test_a_run_folder_is_read_too(tmp_path):
    run = tmp_path / "run"
    for path, text in _files(2, 85.0).items():
        (run / path).parent.mkdir(parents=True, exist_ok=True)
        (run / path).write_text(text)
    doc = record_runs([str(run)], tmp_path / "fs.json")
    assert doc["runs"][0]["seed"] == 2 and doc["miou_mean"] == 85.0
    with pytest.raises(BnrError, match="not found"):
        record_runs([str(tmp_path)], tmp_path / "fs.json")
