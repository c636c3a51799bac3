"""The weights stage (bnr/weights/fingerprints.py, bnr/data/weights_download.py,
bnr/steps/weights.py) and the training stages' check of its fingerprints; downloads from 127.0.0.1
only."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import importlib
import json
import os
from pathlib import Path

import pytest
import yaml

import bnr.weights.fingerprints as weights
from bnr.config.params import parse_params
from bnr.data.sources import SOURCES
from bnr.data.weights_download import download_known_weights
from bnr.errors import BnrError
from bnr.pipeline.stage import stage_paths
from bnr.weights.fingerprints import CACHE_NAME, fingerprint, verify_fingerprint, write_fingerprint
from bnr.weights.pretrained import IMAGENET_FILES, PRETRAINED_FILES
from tests.conftest import REPO, run_step
from tests.httpserver import LocalServer

FAST = {"backoff": 0.0, "timeout": 5.0}
WEIGHTS = b"not really conformer weights"
CONFORMER = SOURCES["conformer_s"].filename
KEY = "train_cam.pretrained"


def make_params(dataset: str = "synthetic", **pretrained: str):
    raw = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    raw["dataset"] = dataset
    for block, value in pretrained.items():
        raw[block]["pretrained"] = value
    return parse_params(raw)


@pytest.fixture
def served():
    """A server with the fake Conformer file, its mirror and a table whose checksum is the
    fake file's (params mirrors carry URLs only)."""
    with LocalServer() as srv:
        mirrors = {"conformer_s": srv.add("m/conformer_s", WEIGHTS)}
        table = dict(SOURCES)
        table["conformer_s"] = dataclasses.replace(
            SOURCES["conformer_s"], md5=None, sha256=hashlib.sha256(WEIGHTS).hexdigest(),
            size=None)
        yield srv, mirrors, table


def test_known_missing_file_is_downloaded_verified_and_fingerprinted(
        served, tmp_path, monkeypatch):
    srv, mirrors, table = served
    monkeypatch.chdir(tmp_path)
    fetch = functools.partial(download_known_weights, mirrors=mirrors, sources=table,
                              progress=False, download_kwargs=FAST)
    path = f"models/pre/{CONFORMER}"
    record = fingerprint(KEY, path, fetch=fetch)
    assert Path(path).read_bytes() == WEIGHTS and srv.hits["/m/conformer_s"] == 1
    assert record == {"bytes": len(WEIGHTS), "file": path, "key": KEY,
                      "sha256": hashlib.sha256(WEIGHTS).hexdigest()}
    assert fingerprint(KEY, path, fetch=fetch) == record
    assert srv.hits["/m/conformer_s"] == 1  # present now: not fetched again


def test_weights_served_with_other_content_fail_the_checksum(served, tmp_path, monkeypatch):
    srv, mirrors, _ = served
    monkeypatch.chdir(tmp_path)
    path = f"w/{CONFORMER}"
    with pytest.raises(BnrError, match="checksum mismatch"):  # the built-in sha256 prefix
        download_known_weights(KEY, path, mirrors, progress=False, download_kwargs=FAST)
    assert not Path(path).exists()
    with pytest.raises(BnrError, match=r"download\.mirrors\.nope: unknown source"):
        download_known_weights(KEY, path, {"nope": srv.url("x")})


def test_missing_unknown_file_is_one_line_naming_key_and_path(tmp_path):
    missing = str(tmp_path / "mine.pth")
    assert download_known_weights(KEY, missing, {}) is False  # not a known source's name
    with pytest.raises(BnrError) as err:
        fingerprint(KEY, missing, fetch=lambda k, p: download_known_weights(k, p, {}))
    assert str(err.value).startswith(f"{KEY}: {missing} not found") and "\n" not in str(err.value)
    assert not Path(missing).exists()


def _fake_pretrain_files(root: Path) -> None:
    for i, rel in enumerate(sorted(PRETRAINED_FILES.values())):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(bytes([i]) * (100 + i))


def _read_outputs(root: Path) -> dict:
    _, outputs = stage_paths(importlib.import_module("bnr.steps.weights"), REPO / "dvc.yaml")
    return {f.name: json.loads((root / getattr(outputs, f.name)).read_text())
            for f in dataclasses.fields(outputs)}


def test_stage_resolves_pretrain_auto_and_empty(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_pretrain_files(tmp_path)
    run_step("weights", make_params("synthetic", train_cam="pretrain", train_affinity="pretrain",
                                    train_segmenter="auto"))
    got = _read_outputs(tmp_path)
    conformer = Path(PRETRAINED_FILES["conformer"]).read_bytes()
    assert got["cam_weights"] == {
        "bytes": len(conformer), "file": PRETRAINED_FILES["conformer"], "key": KEY,
        "sha256": hashlib.sha256(conformer).hexdigest()}
    assert got["affinity_weights"]["file"] == PRETRAINED_FILES["resnet38"]
    assert got["segmenter_weights"] == {"file": None, "key": "train_segmenter.pretrained"}
    # auto means "" for synthetic, the ImageNet files for the real datasets
    run_step("weights", make_params("synthetic", train_cam="auto", train_affinity=""))
    assert [r["file"] for r in _read_outputs(tmp_path).values()] == [None, None, None]
    for name, rel in IMAGENET_FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(name.encode())
    run_step("weights", make_params("voc2012", train_cam="auto", train_affinity="auto",
                                    train_segmenter="auto"))
    assert [r["file"] for r in _read_outputs(tmp_path).values()] == [
        IMAGENET_FILES["conformer"], IMAGENET_FILES["resnet38"], IMAGENET_FILES["resnet38"]]


def test_stable_content_and_cached_digests(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_pretrain_files(tmp_path)
    reads = []
    real = weights.sha256_file
    monkeypatch.setattr(weights, "sha256_file", lambda p: reads.append(str(p)) or real(p))
    params = make_params("synthetic", train_cam="pretrain", train_affinity="pretrain",
                         train_segmenter="pretrain")
    run_step("weights", params)
    assert sorted(reads) == sorted(PRETRAINED_FILES.values())  # each file read once
    out = tmp_path / "models/weights/train_cam.json"
    first, stamp = out.read_text(), out.stat().st_mtime_ns
    assert list(json.loads(first)) == sorted(json.loads(first))  # sorted keys, nothing else
    assert (tmp_path / "models/weights" / CACHE_NAME).is_file()  # beside, not an output
    reads.clear()
    run_step("weights", params)
    assert reads == [] and out.read_text() == first and out.stat().st_mtime_ns == stamp
    # other content (same size): re-hashed, the fingerprint changes
    weights_file = tmp_path / PRETRAINED_FILES["conformer"]
    data = bytearray(weights_file.read_bytes())
    data[0] ^= 0xFF
    weights_file.write_bytes(bytes(data))
    os.utime(weights_file, ns=(1, 1))  # a new mtime even on a coarse clock
    run_step("weights", params)
    assert reads == [PRETRAINED_FILES["conformer"]]
    assert json.loads(out.read_text())["sha256"] == hashlib.sha256(bytes(data)).hexdigest()


def test_training_check_refuses_a_changed_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "w.pth"
    path.write_bytes(b"1234")
    fp = tmp_path / "models/weights/train_cam.json"
    write_fingerprint(fp, fingerprint(KEY, str(path), cache_path=fp.parent / CACHE_NAME))
    verify_fingerprint(fp, KEY, str(path))  # unchanged: fine
    path.write_bytes(b"4321")  # same size, other bytes
    os.utime(path, ns=(1, 1))
    with pytest.raises(BnrError, match=r"changed since the weights stage ran; run dvc repro "
                                       r"\(sha256 differs\)"):
        verify_fingerprint(fp, KEY, str(path))
    path.write_bytes(b"12345")
    with pytest.raises(BnrError, match=r"\(size differs\)"):
        verify_fingerprint(fp, KEY, str(path))
    with pytest.raises(BnrError, match=r"changed since the weights stage ran.*names .*w\.pth"):
        verify_fingerprint(fp, KEY, "")  # the key was set to "" after the stage ran
    with pytest.raises(BnrError, match=r"not the fingerprint of train_affinity\.pretrained"):
        verify_fingerprint(fp, "train_affinity.pretrained", str(path))
    with pytest.raises(BnrError, match=r"not found \(run the weights stage"):
        verify_fingerprint(tmp_path / "none.json", KEY, "")
    # from scratch: the common case, one small read
    write_fingerprint(fp, fingerprint(KEY, ""))
    verify_fingerprint(fp, KEY, "")
    # the training stage runs the check first (its Inputs.weights from dvc.yaml)
    step = importlib.import_module("bnr.steps.train_cam")
    inputs, _ = stage_paths(step, REPO / "dvc.yaml", {"dataset": "synthetic"})
    params = make_params("synthetic", train_cam=str(path))
    with pytest.raises(BnrError, match=r"train_cam\.pretrained: .*w\.pth changed since"):
        step.check(params, inputs)
