import pytest

from bnr.errors import BnrError
from bnr.io import atomic_path, write_json


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
