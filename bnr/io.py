"""Atomic output writing and checked input reading.

Every output a DVC stage caches is written to a temporary sibling and renamed into place, so an
interrupted or failed stage never leaves a partial file (or directory) that DVC would cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from bnr.errors import BnrError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    Works for files and directories. On an exception the temporary is removed and the old
    ``path`` (if any) is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise BnrError(f"{path}: nothing was written")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_writable(paths: list[Path]) -> None:
    """Before any work: each output's folder (its nearest existing ancestor) is a writable
    folder, and an output that is an existing folder is writable (it is replaced); a one-line
    BnrError naming the folder otherwise."""
    for path in map(Path, paths):
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise BnrError(f"{folder}: not a folder, so {path} cannot be written (remove or "
                           "rename the file)")
        for place in (folder, path) if path.is_dir() and not path.is_symlink() else (folder,):
            if not os.access(place, os.W_OK | os.X_OK):
                raise BnrError(f"{place}: folder is not writable, so {path} cannot be written "
                               "(check its permissions, or a read-only file system)")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (NaN written as null)."""
    write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and obj != obj:  # NaN
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an RGB image as a uint8 array (H, W, 3); a one-line BnrError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise BnrError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im.load()
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise BnrError(f"{path}: image too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BnrError(f"{path}: unreadable or truncated image ({exc})") from None


def read_label_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label PNG (palette or grey) as its raw indices, uint8 (H, W)."""
    path = Path(path)
    if not path.is_file():
        raise BnrError(f"{path}: label file not found")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("P", "L"):
                raise BnrError(f"{path}: label PNG must be palette or greyscale, not {im.mode}")
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BnrError(f"{path}: unreadable or truncated label image ({exc})") from None


def voc_palette() -> list[int]:
    """The PASCAL VOC colour palette (256 RGB triples, flattened), index 255 = (224, 224, 192)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def label_png_bytes(label: np.ndarray) -> bytes:
    """A (H, W) label map (class ids 0..255) as the bytes of a VOC palette PNG (the one
    encoder of label PNGs: files, tar members and generated datasets all use it)."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise BnrError(f"label map must be 2-D, got shape {label.shape}")
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_label_png(path: str | os.PathLike[str], label: np.ndarray) -> None:
    """Write a (H, W) uint8 label map as a VOC palette PNG (:func:`label_png_bytes`),
    atomically."""
    try:
        data = label_png_bytes(label)
    except BnrError as exc:
        raise BnrError(f"{path}: {exc}") from None
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
