"""Bring the selected dataset onto disk in the VOC layout and describe it (download stage)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from bnr.config import Params
from bnr.data.synthetic import SyntheticSpec, generate_synthetic
from bnr.errors import BnrError


def prepare_dataset(params: Params) -> dict:
    """Generate or fetch ``params.dataset`` under its root; return the dataset.json content."""
    root = Path(params.data.root)
    if params.dataset == "synthetic":
        spec = SyntheticSpec(**asdict(params.download.synthetic))
        stats = generate_synthetic(root, spec)
        return {"dataset": "synthetic", "root": str(root), "generator": asdict(spec),
                "splits": stats}
    raise BnrError(
        f"download: dataset {params.dataset!r} needs the real data; fetching it is not built yet. "
        f"Put an existing copy at {root} in the VOC layout (JPEGImages, SegmentationClass, "
        f"ImageSets/Segmentation) and set download.existing_root"
    )
