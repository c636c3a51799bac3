"""prepare_dataset end to end (download stage) for voc2012 and coco2014, 127.0.0.1 only."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bnr.config.params import parse_params
from bnr.data.classes import class_names
from bnr.data.prepare import prepare_dataset
from bnr.data.sources import SOURCES
from bnr.data.synthetic import SyntheticSpec, generate_synthetic
from bnr.data.voc import VocSegmentation
from bnr.errors import BnrError

try:
    from tests.httpserver import LocalServer
    from tests.test_coco import annotation_zip, image_zip
    from tests.test_voc_prepare import sbd_tgz, voc_tar, voc_test_tar
except ImportError:  # tests/ is not a package and the repo root is not on sys.path
    from httpserver import LocalServer
    from test_coco import annotation_zip, image_zip
    from test_voc_prepare import sbd_tgz, voc_tar, voc_test_tar
from bnr.steps.download import download_request

REPO = Path(__file__).resolve().parents[1]
FAST = {"backoff": 0.0, "timeout": 5.0}


@pytest.fixture(scope="module")
def archives() -> dict[str, bytes]:
    return {
        "voc2012_trainval": voc_tar(),
        "sbd": sbd_tgz(),
        "voc2012_test": voc_test_tar(),
        "coco2014_train": image_zip("train"),
        "coco2014_val": image_zip("val"),
        "coco2014_annotations": annotation_zip(),
    }


@pytest.fixture
def served(archives: dict[str, bytes]) -> Iterator[tuple[LocalServer, dict, dict]]:
    """Server, download.mirrors (name -> 127.0.0.1 URL) and a source table whose checksums
    are those of the tiny archives (params mirrors carry URLs only)."""
    with LocalServer() as srv:
        mirrors = {name: srv.add(f"m/{name}", data) for name, data in archives.items()}
        table = dict(SOURCES)
        for name, data in archives.items():
            table[name] = dataclasses.replace(
                SOURCES[name], md5=None, sha256=hashlib.sha256(data).hexdigest(), size=None
            )
        yield srv, mirrors, table


def prepare(params: object, **kwargs: object) -> dict:
    """The download stage's call: :func:`prepare_dataset` on the values ``params`` names."""
    return prepare_dataset(download_request(params), **kwargs)


def make_params(dataset: str, **download: object) -> object:
    raw = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    raw["dataset"] = dataset
    raw["download"].update(download)
    return parse_params(raw)


def test_voc2012_end_to_end(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    srv, mirrors, table = served
    monkeypatch.chdir(tmp_path)
    test_mirror = {"voc2012_test": mirrors["voc2012_test"]}
    mirrors = {k: v for k, v in mirrors.items() if k != "voc2012_test"}  # no test archive
    params = make_params("voc2012", mirrors=mirrors)
    stats = prepare(params, sources=table, progress=False, download_kwargs=FAST)
    root = Path("data/voc2012/VOCdevkit/VOC2012")
    assert stats["root"] == str(root) and (root / "SegmentationClassAug").is_dir()
    assert not root.is_symlink()
    assert sorted(p.name for p in Path("data/downloads").iterdir()) == [
        "VOCtrainval_11-May-2012.tar",
        "benchmark.tgz",
    ]
    assert srv.hits["/m/voc2012_trainval"] == 1 and srv.hits["/m/sbd"] == 1
    assert {k: v["images"] for k, v in stats["splits"].items()} == {
        "train": 2,
        "val": 2,
        "train_aug": 4,
    }
    cat = stats["splits"]["train_aug"]["classes"]["cat"]  # every Annotations xml says "cat"
    assert cat == {"images": 4, "image_frequency": 1.0}
    assert stats["splits"]["val"]["classes"]["dog"] == {"images": 0, "image_frequency": 0.0}
    assert stats["published_counts"] == {
        "train": 1464,
        "val": 1449,
        "train_aug": 10582,
        "SegmentationClassAug": 12031,
    }
    assert stats["matches_published"] is False and len(stats["warnings"]) == 5
    assert stats["test_images"] == 0  # the trainval archive has no test split
    assert "test.txt not found" in stats["warnings"][-1]
    json.dumps(stats)  # dataset.json content

    ds = VocSegmentation(root, "train_aug", class_names("voc2012"), mask_dir="SegmentationClassAug")
    assert len(ds) == 4 and ds[0]["mask"].shape == ds[0]["image"].shape[:2]

    # A rerun downloads nothing.
    hits = dict(srv.hits)
    assert prepare(params, sources=table, progress=False)["splits"] == stats["splits"]
    assert dict(srv.hits) == hits

    # With the test archive named in the mirrors its test split is added (fetched once).
    params = dataclasses.replace(params, download=dataclasses.replace(
        params.download, mirrors={**mirrors, **test_mirror}))
    for _ in range(2):
        stats = prepare(params, sources=table, progress=False, download_kwargs=FAST)
        assert stats["test_images"] == 2 and not any("test" in w for w in stats["warnings"])
    assert srv.hits["/m/voc2012_test"] == 1
    assert (root / "ImageSets" / "Segmentation" / "test.txt").read_text().split() == [
        "2009_000001", "2009_000002"]


def test_coco2014_end_to_end(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    srv, mirrors, table = served
    monkeypatch.chdir(tmp_path)
    stats = prepare(
        make_params("coco2014", mirrors=mirrors),
        sources=table,
        progress=False,
        download_kwargs=FAST,
    )
    assert stats["root"] == "data/coco2014" and stats["prepared_at"] == "data/coco2014"
    assert {k: v["images"] for k, v in stats["splits"].items()} == {"train": 2, "val": 1}
    assert stats["splits"]["train"]["classes"]["dog"] == {"images": 2, "image_frequency": 1.0}
    assert stats["splits"]["val"]["classes"]["toothbrush"]["images"] == 1
    assert stats["splits"]["train"]["multi_label_fraction"] == 0.5
    assert stats["published_counts"] == {"train2014_images": 82783, "val2014_images": 40504}
    assert not stats["matches_published"] and stats["warnings"]
    ds = VocSegmentation("data/coco2014", "val", class_names("coco2014"))
    assert ds[0]["id"] == "COCO_val2014_000000000042" and int(ds[0]["labels"][80]) == 1


def test_voc2012_existing_root_and_root_mismatch(
    served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, mirrors, table = served
    first = tmp_path / "first"
    first.mkdir()
    monkeypatch.chdir(first)
    prepare(
        make_params("voc2012", mirrors=mirrors),
        sources=table,
        progress=False,
        download_kwargs=FAST,
    )
    mine = tmp_path / "mine"
    shutil.copytree(first / "data/voc2012/VOCdevkit", mine / "VOCdevkit")
    hits = dict(srv.hits)

    # existing_root (a parent of VOC2012): checked, used in place, linked at the params root.
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    params = make_params("voc2012", mirrors=mirrors, existing_root=str(mine / "VOCdevkit"))
    stats = prepare(params, sources=table, progress=False, download_kwargs=FAST)
    assert dict(srv.hits) == hits  # nothing downloaded
    link = Path("data/voc2012/VOCdevkit/VOC2012")
    assert link.is_symlink() and link.resolve() == (mine / "VOCdevkit/VOC2012").resolve()
    assert stats["prepared_at"] == str(mine / "VOCdevkit/VOC2012")
    assert stats["splits"]["train_aug"]["images"] == 4
    assert len(VocSegmentation(link, "val", class_names("voc2012"))) == 2

    # The root set to the existing folder itself: no link needed.
    raw = copy.deepcopy(params.raw)
    raw["datasets"]["voc2012"]["data"]["root"] = str(mine / "VOCdevkit/VOC2012")
    direct = prepare(parse_params(raw), sources=table, progress=False)
    assert direct["splits"] == stats["splits"]

    # A params root other than the prepared folder: one error naming both paths.
    monkeypatch.chdir(first)
    raw = copy.deepcopy(make_params("voc2012", mirrors=mirrors).raw)
    raw["datasets"]["voc2012"]["data"]["root"] = "data/elsewhere/VOC2012"
    with pytest.raises(BnrError, match=r"data/voc2012/VOCdevkit/VOC2012.*data/elsewhere/VOC2012"):
        prepare(parse_params(raw), sources=table, progress=False)
    # A broken existing copy fails its layout check before anything is used.
    (mine / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").unlink()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BnrError, match=r"missing ImageSets/Segmentation/val\.txt"):
        prepare(params, sources=table, progress=False)


def test_unknown_mirror(
    served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, mirrors, table = served
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BnrError, match=r"download\.mirrors\.nope: unknown source"):
        prepare(make_params("voc2012", mirrors={"nope": srv.url("x")}), sources=table)


def test_synthetic_output_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = make_params("synthetic")
    params = dataclasses.replace(
        params,
        download=dataclasses.replace(
            params.download,
            synthetic=dataclasses.replace(params.download.synthetic, num_train=3, num_val=2),
        ),
    )
    spec = SyntheticSpec(**dataclasses.asdict(params.download.synthetic))
    got = prepare(params)
    assert got == {
        "dataset": "synthetic",
        "root": params.data.root,
        "generator": dataclasses.asdict(spec),
        "splits": generate_synthetic(tmp_path / "again", spec),
    }


def test_download_output_must_hold_the_root(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from bnr.steps import download

    monkeypatch.chdir(tmp_path)
    params = make_params("synthetic")
    for out, words in ((Path("data/other"), "must be a folder named synthetic"),
                       (Path("elsewhere/synthetic"), "is not inside the download stage's output")):
        with pytest.raises(BnrError, match=words):
            download.run(params, download.Inputs(), download.Outputs(dataset=out,
                                                                     stats=Path("d.json")))
    assert list(tmp_path.iterdir()) == []  # checked before any work
