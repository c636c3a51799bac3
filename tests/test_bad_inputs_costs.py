"""Issue 22, the second round of bad inputs, classes 6 and 7: ``bnr predict`` writes every
good image and lists every bad one; a setting whose memory cost explodes is refused before any
work. Same rules as ``tests/test_bad_inputs_round2.py``: exit code, one ``error:`` line per bad
input naming it, no traceback, no partial output.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import update_dataset

try:
    from tests.test_bad_inputs import one_error_line
    from tests.test_bad_inputs_round2 import _set, dumped, run_stage, tiny_raw, work  # noqa: F401
except ImportError:  # tests/ is not a package
    from test_bad_inputs import one_error_line
    from test_bad_inputs_round2 import _set, dumped, run_stage, tiny_raw, work  # noqa: F401


# --- 6. bnr predict: every good image written, every bad one listed ----------------------------

def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (no pixel data: a decompression bomb's
    header as PIL sees it on open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def segmenter_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bnr.checkpoints import save_checkpoint
    from bnr.models.deeplab import create_segmenter

    model = create_segmenter("largefov", "resnet38d_tiny", 7)
    path = tmp_path_factory.mktemp("ckpt") / "segmenter.pt"
    meta = {"kind": "segmenter", "arch": "largefov", "preset": "resnet38d_tiny",
            "num_classes": 7, "dataset": "synthetic"}
    save_checkpoint(path, {"model": model.state_dict(), "meta": meta})
    return path


PREDICT_CASES = [  # (id, bad files {name: bytes}, extra options, text of each line by name)
    ("text-named-jpg-sorts-first", {"0_notes.jpg": b"just some text\n"}, [],
     {"0_notes.jpg": "0_notes.jpg: unreadable or truncated image"}),
    ("zero-byte-png-in-the-middle", {"m.png": b""}, [], {"m.png": "m.png: unreadable"}),
    ("truncated-jpeg-last", {"z.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF"}, [],
     {"z.jpg": "z.jpg: unreadable or truncated image"}),
    ("two-bad-files", {"0.jpg": b"x", "y.bmp": b"BM"}, [],
     {"0.jpg": "0.jpg: unreadable", "y.bmp": "y.bmp: unreadable"}),
    ("decompression-bomb-header", {"bomb.png": _png_header(30_000, 30_000)}, [],
     {"bomb.png": "bomb.png: image too large"}),
    ("over-max-pixels", {"big.png": _png_header(5000, 4000)}, [],
     {"big.png": "big.png: image is 5000x4000 (20.0 megapixels), more than --max-pixels"}),
    ("over-max-pixels-at-scale", {"big.png": _png_header(1500, 1500)},
     ["--scales", "1", "2", "--max-pixels", "5000000"],
     {"big.png": "big.png: image is 1500x1500 (9.0 megapixels at the largest --scales)"}),
]


@pytest.mark.parametrize("bad, extra, needles", [c[1:] for c in PREDICT_CASES],
                         ids=[c[0] for c in PREDICT_CASES])
def test_predict_writes_good_images_and_lists_bad_ones(
        tmp_path: Path, capsys, segmenter_ckpt: Path, bad: dict, extra: list[str],
        needles: dict) -> None:
    from PIL import Image

    from bnr.cli import main as bnr_main

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("b", "n"):
        Image.new("RGB", (24, 16), (30, 90, 200)).save(folder / f"{name}.jpg")
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    code = bnr_main(["predict", "--checkpoint", str(segmenter_ckpt), str(folder),
                     "--out", str(tmp_path / "out"), *extra])
    captured = capsys.readouterr()
    assert code == 2
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in captured.err and len(errors) == len(bad), captured.err
    for line, (_name, needle) in zip(errors, sorted(needles.items()), strict=True):
        assert needle in line and len(line) < 300, line
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["b.png", "b_overlay.png", "n.png", "n_overlay.png"]
    assert f"predicted 2 of {2 + len(bad)} images; {len(bad)} failed" in captured.out


def test_predict_with_only_bad_images_writes_nothing(tmp_path: Path, capsys,
                                                     segmenter_ckpt: Path) -> None:
    from bnr.cli import main as bnr_main

    (tmp_path / "x.jpg").write_bytes(b"text")
    code = bnr_main(["predict", "--checkpoint", str(segmenter_ckpt), str(tmp_path / "x.jpg"),
                     "--out", str(tmp_path / "out")])
    assert code == 2
    one_error_line(capsys.readouterr().err, "x.jpg: unreadable")
    assert not (tmp_path / "out").exists()


# --- 7. values whose cost explodes ------------------------------------------------------------

def _sizes(block: str, **values: object) -> Callable[[Path], str]:
    return dumped(lambda raw: update_dataset(raw, "synthetic", **{block: values}))


MEMORY_CASES = [  # (id, stage, params text, machine GB, text of the line)
    ("crop-2048", "train_cam", _sizes("train_cam", crop_size=2048), 16,
     "datasets.synthetic.train_cam.crop_size=2048 needs at least 206.2 GB (attention maps of "
     "batch_size 2), more than the 16.0 GB of this machine's memory"),
    ("crop-512-batch-16-small-machine", "train_cam", _sizes("train_cam", crop_size=512,
                                                            batch_size=16), 4,
     "datasets.synthetic.train_cam.crop_size=512 needs at least 6.4 GB"),
    ("infer-scale-4096", "infer_seeds", _sizes("infer_seeds", scales=[64, 4096]), 16,
     "datasets.synthetic.infer_seeds.scales=4096 needs at least"),
    ("sweep-step-1e-9", "eval_seeds",
     _set("datasets.synthetic.eval_seeds.threshold_step", 1e-9), 16,
     "datasets.synthetic.eval_seeds.threshold_step=1e-09 needs at least 1164.2 GB "
     "(9.9e+08 sweep steps' confusion"),
    ("segmenter-crop-4096", "train_segmenter",
     _sizes("train_segmenter", crop=4096, batch_size=64), 16,
     "datasets.synthetic.train_segmenter.crop=4096 needs at least 274.9 GB"),
    ("affinity-crop-4096", "train_affinity", _sizes("train_affinity", crop=4096), 16,
     "datasets.synthetic.train_affinity.crop=4096 needs at least"),
    ("pretrain-batch-4096-at-512", "pretrain",
     dumped(lambda raw: raw["pretrain"].update(batch_size=4096, image_size=512)), 16,
     "pretrain.batch_size=4096 needs at least 1650.1 GB (attention / first feature maps of "
     "512 px images)"),
]


@pytest.mark.parametrize("stage, text, machine_gb, needle", [c[1:] for c in MEMORY_CASES],
                         ids=[c[0] for c in MEMORY_CASES])
def test_memory_cost_is_bounded_before_work(work: Path, capsys, monkeypatch: pytest.MonkeyPatch,
                                            stage: str, text: Callable[[Path], str],
                                            machine_gb: int, needle: str) -> None:
    import bnr.pipeline.memory

    monkeypatch.setattr(bnr.pipeline.memory, "machine_memory",
                        lambda device="cpu": (machine_gb * 10**9, "this machine's memory"))
    raw_text = text(work).replace("device: auto", "device: cpu")
    code, err = run_stage(work, capsys, stage, raw_text)
    assert code == 1
    one_error_line(err, needle)


def test_memory_estimates_of_the_shipped_params_fit_a_small_machine() -> None:
    """Every stage of every dataset's shipped configuration is below 8 GB (the estimates are
    lower bounds; the paper's own settings must pass on a laptop-sized check)."""
    from bnr.config.params import parse_params
    from bnr.models.conformer import PRESETS
    from bnr.pipeline.memory import CONFORMER_ATTENTION, estimates
    from tests.conftest import REPO

    assert CONFORMER_ATTENTION == {n: (c.num_heads, c.depth, c.patch_size)
                                   for n, c in PRESETS.items()}
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["runtime"]["device"] = "cpu"
    for dataset in ("synthetic", "voc2012", "coco2014"):
        params = parse_params({**raw, "dataset": dataset})
        for stage in ("train_cam", "infer_seeds", "train_affinity", "train_segmenter",
                      "eval_seeds", "pretrain"):
            assert all(need < 8e9 for _, need, _ in estimates(params, stage)), (dataset, stage)


def test_memory_budget_follows_the_resolved_device() -> None:
    import os
    from types import SimpleNamespace

    import torch

    from bnr.pipeline.memory import machine_memory, resolved

    def cfg(device: str, precision: str) -> SimpleNamespace:
        return SimpleNamespace(runtime=SimpleNamespace(device=device, precision=precision))

    assert resolved(cfg("cuda", "auto")) == ("cuda", 2)  # bfloat16 autocast
    assert resolved(cfg("cpu", "auto")) == ("cpu", 4)
    assert resolved(cfg("cpu", "bfloat16")) == ("cpu", 2)
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert machine_memory("cpu") == (host, "this machine's memory")
    if not torch.cuda.is_available():  # runtime.device: cuda without one: bnr.runtime says so
        assert machine_memory("cuda") == (host, "this machine's memory")
