"""Class names of each dataset (index 0 is always background)."""

from __future__ import annotations

from bnr.errors import BnrError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


# The generated shapes of bnr.data.synthetic; the context texture of each is in its CONTEXTS.
SYNTHETIC_CLASSES = ("background", "disc", "square", "triangle", "cross", "ring", "star")

COCO_CLASSES: tuple[str, ...] = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
# The official COCO category ids of COCO_CLASSES[1:] (1..90 with 10 gaps).
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(
    i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
)


def class_names(dataset: str) -> tuple[str, ...]:
    """The class list of ``dataset`` (``synthetic``, ``voc2012`` or ``coco2014``)."""
    if dataset == "synthetic":
        return tuple(SYNTHETIC_CLASSES)
    if dataset == "voc2012":
        return VOC_CLASSES
    if dataset == "coco2014":
        return COCO_CLASSES
    raise BnrError(f"unknown dataset {dataset!r} (known: synthetic, voc2012, coco2014)")
