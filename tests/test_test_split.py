"""The voc2012 default ``test_split: test`` on a tree without a test split: ``evaluate`` writes
its val metrics, an empty server archive and the reason; with the test split it writes the
archive."""

import json
import tarfile
from pathlib import Path

import pytest
import yaml

from bnr.checkpoints import save_checkpoint
from bnr.config.params import parse_params
from bnr.data.checks import server_archive_skip
from bnr.models.deeplab import create_segmenter
from bnr.segmenter.evaluation import SERVER_DIR
from tests.conftest import REPO, run_step, update_dataset, write_voc_tree

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("one_torch_thread")]


def voc_params(root: Path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["dataset"] = "voc2012"
    update_dataset(raw, "voc2012", data={"root": str(root)}, evaluate={"scales": [1.0]},
                   train_segmenter={"backbone": "resnet38d_tiny"})
    raw["evaluate"]["overlays"] = 1
    assert raw["datasets"]["voc2012"]["data"]["test_split"] == "test"  # the default under test
    return parse_params(raw)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_voc_tree(tmp_path / "voc", {"train": ["a"], "val": ["b", "c"]}, num_classes=21)
    model = create_segmenter("largefov", "resnet38d_tiny", 21)
    meta = {"kind": "segmenter", "arch": "largefov", "preset": "resnet38d_tiny",
            "num_classes": 21, "dataset": "voc2012"}
    save_checkpoint(tmp_path / "models" / "segmenter.pt", {"model": model.state_dict(),
                                                           "meta": meta})
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_evaluate(work: Path) -> dict:
    run_step("evaluate", voc_params(work / "voc"))
    return json.loads((work / "metrics" / "segmentation.json").read_text())


def test_no_test_split_still_evaluates(workdir: Path) -> None:
    metrics = run_evaluate(workdir)
    assert metrics["images"] == 2 and 0 <= metrics["miou"] <= 100
    assert metrics["server_archive_written"] == 0
    protocol = json.loads((workdir / "metrics" / "segmentation.protocol.json").read_text())
    assert "test.txt not found" in protocol["server_archive"]["note"]
    with tarfile.open(workdir / "data" / "server_archive.tar") as tar:
        assert tar.getnames() == []  # the DVC out exists, empty


def test_test_split_present_writes_archive(workdir: Path) -> None:
    voc = workdir / "voc"
    write_voc_tree(workdir / "extra", {"test": ["t1", "t2"]}, num_classes=21)
    for name in ("t1", "t2"):
        (workdir / "extra" / "JPEGImages" / f"{name}.jpg").rename(voc / "JPEGImages" /
                                                                  f"{name}.jpg")
    (voc / "ImageSets" / "Segmentation" / "test.txt").write_text("t1\nt2\n")
    metrics = run_evaluate(workdir)
    assert metrics["server_archive_written"] == 1
    with tarfile.open(workdir / "data" / "server_archive.tar") as tar:
        assert tar.getnames() == [f"{SERVER_DIR}/t1.png", f"{SERVER_DIR}/t2.png"]


def test_test_images_missing_is_a_reason(workdir: Path) -> None:
    voc = workdir / "voc"
    (voc / "ImageSets" / "Segmentation" / "test.txt").write_text("t1\n")
    params = voc_params(voc)
    reason = server_archive_skip(params.dataset, params.data.root, params.data.test_split)
    assert reason.startswith("1 of 1 test images are missing")
