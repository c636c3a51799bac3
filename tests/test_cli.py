"""``bnr predict`` with a segmenter and a CAM checkpoint on tiny images; its clear errors."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bnr.checkpoints import save_checkpoint
from bnr.cli import main
from bnr.models.conformer import create_conformer
from bnr.models.deeplab import create_segmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("one", "two"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(
            folder / f"{name}.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture
def segmenter_ckpt(tmp_path: Path) -> Path:
    model = create_segmenter("largefov", "resnet38d_tiny", 7)
    path = tmp_path / "segmenter.pt"
    meta = {"kind": "segmenter", "arch": "largefov", "preset": "resnet38d_tiny",
            "num_classes": 7, "dataset": "synthetic"}
    save_checkpoint(path, {"model": model.state_dict(), "meta": meta})
    return path


@pytest.fixture
def cam_ckpt(tmp_path: Path) -> Path:
    model = create_conformer("conformer_tiny", num_classes=7)
    path = tmp_path / "cam.pt"
    meta = {"kind": "cam", "preset": "conformer_tiny", "num_classes": 7, "dataset": "synthetic"}
    save_checkpoint(path, {"model": model.state_dict(), "meta": meta,
                           "protocol": {"data": {"infer_scales": [64]}}})
    return path


def _check_outputs(out: Path, names: list[str], n_classes: int) -> None:
    for name in names:
        with Image.open(out / f"{name}.png") as im:
            assert im.mode == "P" and im.size == (56, 40)
            assert np.asarray(im).max() < n_classes
        with Image.open(out / f"{name}_overlay.png") as im:
            assert im.mode == "RGB" and im.size == (56, 40)


def test_predict_segmenter_folder(images: Path, segmenter_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(segmenter_ckpt), "--scales", "0.5", "1.0",
                 "--flip", str(images), "--out", str(out)])
    assert code == 0
    _check_outputs(out, ["one", "two"], 7)
    assert not (out / "notes.png").exists()


def test_predict_cam_seeds(images: Path, cam_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(cam_ckpt), "--classes", "1,3",
                 "--threshold", "0.3", str(images / "one.jpg"), "--out", str(out)])
    assert code == 0
    _check_outputs(out, ["one"], 7)
    with Image.open(out / "one.png") as im:
        assert set(np.unique(np.asarray(im))) <= {0, 1, 3}


def test_predict_cam_needs_classes(images: Path, cam_ckpt: Path, tmp_path: Path,
                                   capsys) -> None:
    code = main(["predict", "--checkpoint", str(cam_ckpt), str(images), "--out",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "needs --classes" in err and "--threshold" in err
    code = main(["predict", "--checkpoint", str(cam_ckpt), "--classes", "9", "--threshold",
                 "0.3", str(images), "--out", str(tmp_path / "o")])
    assert code == 2 and "not a foreground class" in capsys.readouterr().err


def test_unreadable_image_names_file(segmenter_ckpt: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    code = main(["predict", "--checkpoint", str(segmenter_ckpt), str(bad), "--out",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and err.count("\n") == 1


def test_bad_checkpoint_and_missing_input(tmp_path: Path, images: Path, capsys) -> None:
    code = main(["predict", "--checkpoint", str(tmp_path / "none.pt"), str(images), "--out",
                 str(tmp_path / "o")])
    assert code == 2 and "checkpoint not found" in capsys.readouterr().err
    code = main(["predict", "--checkpoint", str(tmp_path / "none.pt"), str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "input not found" in capsys.readouterr().err
