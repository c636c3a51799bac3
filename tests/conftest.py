import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from bnr.io import write_label_png  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_voc_tree(root: Path, ids_by_split: dict, num_classes: int = 4, size=(24, 32)) -> Path:
    """A tiny VOC-layout tree: random JPEGs, masks with a square of class (i % (C-1)) + 1."""
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    labels = {}
    h, w = size
    for split, ids in ids_by_split.items():
        for i, img_id in enumerate(ids):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                root / "JPEGImages" / f"{img_id}.jpg"
            )
            cls = i % (num_classes - 1) + 1
            mask = np.zeros((h, w), np.uint8)
            mask[4:12, 6:18] = cls
            mask[3, 6:18] = 255
            write_label_png(root / "SegmentationClass" / f"{img_id}.png", mask)
            labels[img_id] = [cls]
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    import json

    (root / "cls_labels.json").write_text(json.dumps(labels))
    return root


def pytest_configure(config) -> None:
    """Under pytest-xdist (``-n``, as pyproject's addopts ask) the workers share the cores: each
    gets its share of torch threads, so they do not oversubscribe them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


def pytest_collection_modifyitems(config, items) -> None:
    """The slow end-to-end module first: pytest-xdist hands out modules in this order, so the
    longest one starts at once beside the rest instead of after them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable


def numerics_threads() -> int:
    """The torch thread count of the numerics tests (``BNR_TEST_THREADS``, default 1)."""
    return int(os.environ.get("BNR_TEST_THREADS", "1"))


@pytest.fixture
def one_torch_thread():
    """One torch thread: small convolutions on shared cores thrash with more (20x slower).
    ``BNR_TEST_THREADS=2`` runs these tests with 2 threads (checks that tolerances hold across
    thread counts, whose kernels split and sum work differently)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(numerics_threads())
    yield
    torch.set_num_threads(before)


@pytest.fixture
def voc_tree(tmp_path: Path) -> Path:
    return write_voc_tree(tmp_path / "voc", {"train": ["a", "b", "c"], "val": ["d"]})


def run_step(name: str, params, **kwargs):
    """Run ``bnr.steps.<name>`` on ``params`` with the paths of its cmd in the repository's
    dvc.yaml (relative: the test's working directory); returns what ``run`` returns."""
    import importlib

    from bnr.pipeline.stage import stage_paths

    step = importlib.import_module(f"bnr.steps.{name}")
    inputs, outputs = stage_paths(step, REPO / "dvc.yaml", {"dataset": params.dataset})
    return step.run(params, inputs, outputs, **kwargs)


def stage_argv(stage: str, *extra: str) -> list[str]:
    """The command line of ``stages/<stage>.py`` with the path options of its cmd in the
    repository's dvc.yaml (run it in a working directory of its own)."""
    import sys

    from bnr.pipeline.stage import stage_command

    script, args = stage_command(stage, REPO / "dvc.yaml", {"dataset": "synthetic"})
    return [sys.executable, str(REPO / script), *extra, *args]


def write_weights_fingerprint(cwd: Path, stage: str, weights: str = "") -> None:
    """What the weights stage writes for ``stage`` (a training stage) when its ``*.pretrained``
    key is ``weights`` ("" = from scratch), at the ``--weights`` path of its cmd under ``cwd``
    (its stage command checks it before training)."""
    import importlib

    from bnr.pipeline.stage import stage_paths
    from bnr.weights.fingerprints import fingerprint, write_fingerprint

    inputs, _ = stage_paths(importlib.import_module(f"bnr.steps.{stage}"), REPO / "dvc.yaml")
    write_fingerprint(Path(cwd) / inputs.weights, fingerprint(f"{stage}.pretrained", weights))


def update_dataset(raw: dict, dataset: str, **blocks: dict) -> dict:
    """Update sub-blocks of ``raw["datasets"][dataset]``: ``update_dataset(raw, "synthetic",
    data={"root": ...}, train_cam={"epochs": 1})``; returns ``raw``."""
    for name, values in blocks.items():
        raw["datasets"][dataset][name].update(values)
    return raw


def with_dataset(params, block: str, **changes):
    """``params`` with ``changes`` in its dataset's sub-block ``block`` (``data``,
    ``train_affinity``, ...)."""
    import dataclasses

    sizes = params.per_dataset
    new = dataclasses.replace(getattr(sizes, block), **changes)
    return dataclasses.replace(params, per_dataset=dataclasses.replace(sizes, **{block: new}))
