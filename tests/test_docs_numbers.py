"""The figures README.md and docs/*.md quote are the ones in metrics/
(``scripts/docs_numbers.py``): every marked block equals what metrics/ gives, and a changed
figure, an unknown block or a stage time typed by hand outside a block is caught."""

import shutil
import sys
from pathlib import Path

import pytest

from bnr.errors import BnrError
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import docs_numbers  # noqa: E402


def test_the_docs_quote_the_committed_metrics() -> None:
    assert docs_numbers.check() == [], "python scripts/docs_numbers.py --write"
    readme = (REPO / "README.md").read_text()
    for name in ("chain", "times", "tolerance_summary"):
        assert f"<!-- metrics:{name} -->" in readme, name


def _copy(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "metrics", repo / "metrics")
    shutil.copytree(REPO / "docs", repo / "docs")
    shutil.copy(REPO / "README.md", repo / "README.md")
    return repo


def test_a_figure_that_differs_from_its_metrics_file_fails(tmp_path: Path) -> None:
    repo = _copy(tmp_path)
    seeds = repo / "metrics" / "seeds.json"
    seeds.write_text(seeds.read_text().replace('"miou": ', '"miou": 1'))  # 32.8 -> 132.8
    assert "README.md: block metrics:chain differs from metrics/" in docs_numbers.check(repo)
    assert docs_numbers.write(repo) == [repo / "README.md"]
    assert docs_numbers.check(repo) == []
    cam = repo / "metrics" / "train_cam.json"
    cam.write_text(cam.read_text().replace('"seconds_this_run": ', '"seconds_this_run": 1'))
    problems = docs_numbers.check(repo)
    assert "README.md: block metrics:times differs from metrics/" in problems
    assert "docs/reproducibility.md: block metrics:times differs from metrics/" in problems


def test_hand_typed_times_and_unknown_blocks(tmp_path: Path) -> None:
    repo = _copy(tmp_path)
    readme = repo / "README.md"
    readme.write_text(readme.read_text() + "\nThe first run: train_cam 182 s.\n")
    assert docs_numbers.check(repo) == ["README.md: stage time typed by hand: 'train_cam 182 s'"]
    readme.write_text(readme.read_text() + "<!-- metrics:nope -->\n<!-- /metrics:nope -->\n")
    with pytest.raises(BnrError, match="unknown block metrics:nope"):
        docs_numbers.check(repo)
