"""The model registry: every kind built by kind and preset, rebuilt from its checkpoint, its
weight sources known to the downloader."""

from pathlib import Path

import pytest
import torch

from bnr.checkpoints import save_checkpoint
from bnr.data.sources import SOURCES
from bnr.data.weights_download import WEIGHT_SOURCES
from bnr.errors import BnrError
from bnr.models.registry import (
    FAMILIES,
    MODELS,
    create_model,
    import_all_families,
    model_from_checkpoint,
)
from tests.conftest import REPO

import_all_families()
TINY = {"cam": "conformer_tiny", "affinity": "resnet38d_tiny", "segmenter": "resnet38d_tiny"}


def test_every_kind_is_registered_by_its_family() -> None:
    assert set(MODELS) == set(FAMILIES) == set(TINY)
    for kind, entry in MODELS.items():
        assert entry.family == FAMILIES[kind] and TINY[kind] in entry.presets
        assert (REPO / "bnr" / "models" / f"{entry.family}.py").is_file()
        assert entry.weight_sources and set(entry.weight_sources) <= set(SOURCES), kind
    # the weights stage downloads exactly the registry's weight sources
    assert {s for e in MODELS.values() for s in e.weight_sources} == set(WEIGHT_SOURCES)


@pytest.mark.parametrize("kind", sorted(TINY))
def test_checkpoint_round_trip_rebuilds_the_same_network(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(kind, TINY[kind], num_classes=5)
    meta = {"kind": kind, "preset": TINY[kind], "num_classes": 5}
    if kind == "segmenter":
        meta["arch"] = "largefov"
    save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "meta": meta})
    again, state = model_from_checkpoint(tmp_path / "m.pt", {"kind": kind})
    assert type(again) is type(model) and not again.training and state["meta"] == meta
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_unknown_names_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(BnrError, match=r"^unknown model kind 'vit' \(known: cam, affinity, "):
        create_model("vit", "x")
    with pytest.raises(BnrError, match=r"^unknown cam preset 'conformer_b' \(known: "):
        create_model("cam", "conformer_b", num_classes=3)
    with pytest.raises(BnrError, match=r"absent.pt: checkpoint not found$"):
        model_from_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(BnrError, match=r"checkpoint not found \(run the train_cam stage\)$"):
        model_from_checkpoint(tmp_path / "absent.pt", made_by="train_cam")
