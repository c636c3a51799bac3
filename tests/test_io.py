import io

import numpy as np
import pytest
from PIL import Image

from bnr.errors import BnrError
from bnr.io import (
    atomic_path,
    label_png_bytes,
    read_label_png,
    voc_palette,
    write_json,
    write_label_png,
)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "half").write_text("x")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_directory(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new"]


def test_nothing_written_is_an_error(tmp_path):
    with pytest.raises(BnrError, match="nothing was written"):
        with atomic_path(tmp_path / "x"):
            pass


def test_write_json_nan_as_null(tmp_path):
    write_json(tmp_path / "m.json", {"a": float("nan"), "b": 1.5})
    assert '"a": null' in (tmp_path / "m.json").read_text()


def test_label_png_bytes_round_trip_with_the_voc_palette(tmp_path):
    label = np.array([[0, 1, 2], [15, 20, 255]], np.uint8)
    with Image.open(io.BytesIO(label_png_bytes(label))) as im:
        assert im.mode == "P" and im.format == "PNG"
        assert im.getpalette()[: 3 * 3] == [0, 0, 0, 128, 0, 0, 0, 128, 0]  # VOC 0, 1, 2
        assert im.getpalette()[3 * 255 :] == [224, 224, 192]  # VOC's ignore colour
        assert (np.asarray(im) == label).all()
    write_label_png(tmp_path / "a.png", label)
    assert (tmp_path / "a.png").read_bytes() == label_png_bytes(label)
    assert (read_label_png(tmp_path / "a.png") == label).all()
    assert voc_palette()[3 * 15 : 3 * 16] == [192, 128, 128]  # person


def test_label_png_rejects_non_2d(tmp_path):
    with pytest.raises(BnrError, match=r"a\.png: label map must be 2-D"):
        write_label_png(tmp_path / "a.png", np.zeros((2, 3, 1), np.uint8))
    assert not (tmp_path / "a.png").exists()
