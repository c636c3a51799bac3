"""Class names of each dataset (index 0 is always background)."""

from __future__ import annotations

from bnr.data.synthetic import SYNTHETIC_CLASSES
from bnr.errors import BnrError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


def class_names(dataset: str) -> tuple[str, ...]:
    """The class list of ``dataset`` (``synthetic``, ``voc2012`` or ``coco2014``)."""
    if dataset == "synthetic":
        return tuple(SYNTHETIC_CLASSES)
    if dataset == "voc2012":
        return VOC_CLASSES
    if dataset == "coco2014":
        from bnr.data.coco import COCO_CLASSES

        return tuple(COCO_CLASSES)
    raise BnrError(f"unknown dataset {dataset!r} (known: synthetic, voc2012, coco2014)")
