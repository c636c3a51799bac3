"""PASCAL VOC 2012 layout reader (also reads the synthetic set and, via its prepared layout, COCO).

Layout under ``root``::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png        (or SegmentationClassAug/ for train_aug)
    ImageSets/Segmentation/<split>.txt
    cls_labels.json                   optional: {id: [1-based class indices]}
    Annotations/<id>.xml              used for image-level labels when cls_labels.json is absent

Every problem with the files (missing image, truncated JPEG, mask value that is neither a class
nor 255, mask/image size mismatch, empty split) is a one-line ``BnrError`` naming the file.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bnr.errors import BnrError
from bnr.io import read_image, read_label_png

IGNORE_INDEX = 255


def read_utf8(path: Path, what: str) -> str:
    """The text of ``path``; a one-line BnrError naming the byte offset when it is not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BnrError(f"{path}: {what} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                       f"offset {exc.start})") from None


def read_split(root: str | Path, split: str) -> list[str]:
    """Image ids listed in ``ImageSets/Segmentation/<split>.txt``, one per line; error (naming
    the file and line) if missing, empty, not UTF-8, a line holding more than one word (an id
    with a space), an id that is not printable or not a file name, or an id listed twice."""
    path = Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        raise BnrError(f"{path}: split file not found")
    text = read_utf8(path, "split file").removeprefix("\ufeff")  # a BOM of Windows editors
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), 1):  # the line numbers of an editor
        words = line.split()
        if not words:
            continue
        shown = line.strip() if len(line.strip()) <= 60 else line.strip()[:60] + "..."
        if len(words) > 1:
            raise BnrError(f"{path}: line {number}: one image id per line, got {shown!r} "
                           f"({len(words)} words; an id may not contain spaces)")
        img_id = words[0]
        if not img_id.isprintable() or "/" in img_id or "\\" in img_id or img_id in (".", ".."):
            raise BnrError(f"{path}: line {number}: image id {shown!r} is not a file name "
                           "(printable characters, no / or \\)")
        if img_id in first_line:
            raise BnrError(f"{path}: image id {img_id!r} is listed twice (line {number}, first "
                           f"at line {first_line[img_id]})")
        first_line[img_id] = number
    if not first_line:
        raise BnrError(f"{path}: split is empty")
    return list(first_line)


def check_split_images(root: str | Path, ids: Sequence[str]) -> None:
    """Stop with the first listed image whose JPEG is missing or empty (zero bytes)."""
    img_dir = Path(root) / "JPEGImages"
    for img_id in ids:
        path = img_dir / f"{img_id}.jpg"
        if not path.is_file():
            raise BnrError(f"{path}: listed in the split but missing")
        if path.stat().st_size == 0:
            raise BnrError(f"{path}: empty image file (0 bytes)")


def read_image_labels(root: str | Path, ids: Sequence[str], class_names: Sequence[str]) -> dict:
    """Image-level labels {id: sorted 1-based class indices} for ``ids``.

    From ``cls_labels.json`` when present, else from the VOC ``Annotations/<id>.xml`` object
    names (the image-level supervision WSSS is allowed to use).
    """
    root = Path(root)
    json_path = root / "cls_labels.json"
    if json_path.is_file():
        try:
            table = json.loads(read_utf8(json_path, "label table"))
        except json.JSONDecodeError as exc:
            raise BnrError(f"{json_path}: not valid JSON ({exc})") from None
        if not isinstance(table, dict):
            raise BnrError(f"{json_path}: must be a JSON object {{image id: [class indices]}}, "
                           f"got a {type(table).__name__} at top level")
        out = {}
        for img_id in ids:
            if img_id not in table:
                raise BnrError(f"{json_path}: no image-level label for {img_id}")
            classes = table[img_id]
            if not isinstance(classes, list):
                shown = repr(classes) if len(repr(classes)) <= 60 else repr(classes)[:60] + "..."
                raise BnrError(f"{json_path}: {img_id} must map to a list of class indices "
                               f"(e.g. [{shown}]), got {shown}")
            bad = [c for c in classes if isinstance(c, bool)
                   or not (isinstance(c, int) and 0 < c < len(class_names))]
            if bad:
                shown = repr(bad[0]) if len(repr(bad[0])) <= 60 else repr(bad[0])[:60] + "..."
                raise BnrError(f"{json_path}: {img_id} has invalid class index {shown} (class "
                               f"indices are integers 1..{len(class_names) - 1})")
            out[img_id] = sorted(set(classes))
        return out
    index = {name: i for i, name in enumerate(class_names)}
    out = {}
    for img_id in ids:
        xml_path = root / "Annotations" / f"{img_id}.xml"
        if not xml_path.is_file():
            raise BnrError(f"{xml_path}: no cls_labels.json and no annotation for {img_id}")
        try:
            names = [o.findtext("name", "").strip() for o in ET.parse(xml_path).iter("object")]
        except ET.ParseError as exc:
            raise BnrError(f"{xml_path}: unreadable annotation ({exc})") from None
        unknown = [n for n in names if n not in index]
        if unknown:
            raise BnrError(f"{xml_path}: unknown class name {unknown[0]!r}")
        out[img_id] = sorted({index[n] for n in names})
    return out


def labels_to_multihot(classes: Sequence[int], num_classes: int) -> torch.Tensor:
    """(S,) float multi-hot vector with background (channel 0) set to 1."""
    vec = torch.zeros(num_classes)
    vec[0] = 1.0
    vec[list(classes)] = 1.0
    return vec


def read_mask(
    path: str | Path, num_classes: int, image_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """Read a label PNG, check values (class index or 255) and size; (H, W) uint8."""
    mask = read_label_png(path)
    if image_hw is not None and mask.shape != tuple(image_hw):
        raise BnrError(
            f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
            f"{image_hw[1]}x{image_hw[0]}"
        )
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        raise BnrError(
            f"{path}: mask value {int(mask[bad][0])} is neither a class index "
            f"(0..{num_classes - 1}) nor {IGNORE_INDEX}"
        )
    return mask


class VocSegmentation(Dataset):
    """A split of a VOC-layout dataset.

    Items are dicts: ``id``, ``image`` (H, W, 3) uint8 array, ``labels`` (S,) multi-hot tensor,
    and with ``with_mask`` the ``mask`` (H, W) uint8 from ``mask_dir``. ``transform(image, mask)``
    (mask may be None) is applied last and returns the new pair.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str],
        *,
        mask_dir: str = "SegmentationClass",
        with_mask: bool = True,
        transform: Callable[[Any, Any], tuple[Any, Any]] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.mask_dir = mask_dir
        self.with_mask = with_mask
        self.transform = transform
        if not self.root.is_dir():
            raise BnrError(f"{self.root}: dataset root not found (run the download stage)")
        self.ids = read_split(self.root, split)
        check_split_images(self.root, self.ids)
        self.labels = read_image_labels(self.root, self.ids, self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, img_id: str) -> Path:
        return self.root / "JPEGImages" / f"{img_id}.jpg"

    def mask_path(self, img_id: str) -> Path:
        return self.root / self.mask_dir / f"{img_id}.png"

    def __getitem__(self, index: int) -> dict:
        img_id = self.ids[index]
        image = read_image(self.image_path(img_id))
        mask = None
        if self.with_mask:
            mask = read_mask(self.mask_path(img_id), self.num_classes, image.shape[:2])
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        item = {
            "id": img_id,
            "image": image,
            "labels": labels_to_multihot(self.labels[img_id], self.num_classes),
        }
        if mask is not None:
            item["mask"] = mask
        return item
