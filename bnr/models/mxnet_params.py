"""Read MXNet ``.params`` files (what ``mx.nd.save`` writes) without depending on mxnet.

Binary layout, little-endian, as written by MXNet's ``NDArray::Save`` (src/ndarray/ndarray.cc)
through dmlc-core's stream serializer:

* file header: ``uint64`` list magic ``0x112``, then a ``uint64`` reserved field (0);
* ``uint64`` number of arrays, then each array record:

  - ``uint32`` record magic: ``0xF993FAC9`` (V2, with storage type) or ``0xF993FACA`` (V3, NumPy
    shape semantics): then ``int32`` storage type (0 = dense; sparse types are rejected here),
    shape as ``int32 ndim`` + ``ndim x int64``;
  - ``0xF993FAC8`` (V1): shape as ``int32 ndim`` + ``ndim x int64`` (no storage type);
  - anything else (files from MXNet before 2017, e.g. the ademxapp ImageNet models): the value
    itself is ``ndim`` and the dimensions follow as ``ndim x uint32``;

  then (unless the shape is empty) the context as ``int32 dev_type, int32 dev_id``, an ``int32``
  dtype flag (mshadow ``TypeFlag``) and the raw C-order data;
* ``uint64`` number of names, then each name as ``uint64`` length + bytes (``arg:``/``aux:``
  prefixes for checkpoints written by ``mx.model.save_checkpoint``).

:func:`write_mxnet_params` writes the same format; it exists for tests only.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from bnr.errors import BnrError

LIST_MAGIC = 0x112
NDARRAY_V1_MAGIC = 0xF993FAC8
NDARRAY_V2_MAGIC = 0xF993FAC9
NDARRAY_V3_MAGIC = 0xF993FACA

# mshadow TypeFlag -> numpy dtype (12 = bfloat16 is handled separately).
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
    7: np.dtype("?"),
    8: np.dtype("<i2"),
    9: np.dtype("<u2"),
    10: np.dtype("<u4"),
    11: np.dtype("<u8"),
}
_BFLOAT16 = 12
_MAX_NDIM = 32
_MAX_COUNT = 10_000_000


class _Reader:
    """Sequential little-endian reader that turns every short read into a one-line BnrError."""

    def __init__(self, fh: BinaryIO, path: Path) -> None:
        self.fh = fh
        self.path = path
        self.size = os.fstat(fh.fileno()).st_size

    def read(self, n: int, what: str) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise BnrError(
                f"{self.path}: truncated MXNet .params file: needed {n} bytes for {what} at "
                f"offset {self.fh.tell() - len(data)}, got {len(data)}"
            )
        return data

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt), what))

    def remaining(self) -> int:
        return self.size - self.fh.tell()


def _read_shape(rd: _Reader, what: str, legacy_ndim: int | None) -> tuple[int, ...] | None:
    """Read a shape; ``None`` means MXNet's 'none' array (no context, dtype or data follow)."""
    if legacy_ndim is not None:  # pre-2017 TShape: ndim already read, uint32 dims
        ndim = legacy_ndim
        if ndim > _MAX_NDIM:
            raise BnrError(
                f"{rd.path}: not an MXNet NDArray file ({what} has an unknown record magic "
                f"0x{ndim:08X})"
            )
        return tuple(rd.unpack(f"{ndim}I", what + " shape")) if ndim else None
    (ndim,) = rd.unpack("i", what + " ndim")
    if ndim == -1:  # unknown shape (V3)
        return None
    if not 0 <= ndim <= _MAX_NDIM:
        raise BnrError(f"{rd.path}: corrupt MXNet .params file ({what} has ndim {ndim})")
    dims = rd.unpack(f"{ndim}q", what + " shape")
    if any(d < 0 for d in dims):
        raise BnrError(f"{rd.path}: corrupt MXNet .params file ({what} has shape {dims})")
    return tuple(dims)


def _read_array(rd: _Reader, index: int) -> np.ndarray:
    what = f"array #{index}"
    (magic,) = rd.unpack("I", what + " record magic")
    if magic in (NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC):
        (stype,) = rd.unpack("i", what + " storage type")
        if stype != 0:
            raise BnrError(
                f"{rd.path}: {what} uses sparse storage type {stype}; only dense arrays are "
                "supported"
            )
        shape = _read_shape(rd, what, None)
        if shape == () and magic == NDARRAY_V2_MAGIC:  # ndim 0 means 'none' before V3
            shape = None
    elif magic == NDARRAY_V1_MAGIC:
        shape = _read_shape(rd, what, None)
        if shape == ():
            shape = None
    else:
        shape = _read_shape(rd, what, legacy_ndim=magic)
    if shape is None:
        raise BnrError(f"{rd.path}: {what} is an empty (none) NDArray; not a parameter")
    rd.unpack("ii", what + " context")
    (flag,) = rd.unpack("i", what + " dtype flag")
    if flag == _BFLOAT16:
        dtype = np.dtype("<u2")
    elif flag in _DTYPES:
        dtype = _DTYPES[flag]
    else:
        raise BnrError(f"{rd.path}: {what} has unknown MXNet dtype flag {flag}")
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    if nbytes > rd.remaining():
        raise BnrError(
            f"{rd.path}: truncated MXNet .params file: {what} of shape {shape} needs {nbytes} "
            f"bytes, only {rd.remaining()} left"
        )
    buf = bytearray(nbytes)
    if rd.fh.readinto(buf) != nbytes:  # pragma: no cover - guarded by the size check above
        raise BnrError(f"{rd.path}: truncated MXNet .params file while reading {what}")
    arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
    if flag == _BFLOAT16:
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def read_mxnet_params(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read an MXNet NDArray-list file into ``{name: array}`` (names keep ``arg:``/``aux:``).

    Raises a one-line :class:`BnrError` naming the file for a missing, truncated, corrupt or
    non-MXNet file, for sparse arrays, and for lists saved without names.
    """
    path = Path(path)
    if not path.is_file():
        raise BnrError(f"{path}: MXNet .params file not found")
    with open(path, "rb") as fh:
        rd = _Reader(fh, path)
        head = fh.read(16)
        if len(head) < 16:
            raise BnrError(f"{path}: not an MXNet NDArray file (only {len(head)} bytes)")
        header, _reserved = struct.unpack("<QQ", head)
        if header != LIST_MAGIC:
            raise BnrError(
                f"{path}: not an MXNet NDArray file (header 0x{header:X}, expected 0x112)"
            )
        (n_arrays,) = rd.unpack("Q", "the array count")
        if n_arrays > _MAX_COUNT:
            raise BnrError(f"{path}: corrupt MXNet .params file ({n_arrays} arrays)")
        arrays = [_read_array(rd, i) for i in range(n_arrays)]
        (n_names,) = rd.unpack("Q", "the name count")
        if n_names == 0 and n_arrays:
            raise BnrError(
                f"{path}: MXNet file holds {n_arrays} unnamed arrays (a list, not params)"
            )
        if n_names != n_arrays:
            raise BnrError(
                f"{path}: corrupt MXNet .params file ({n_arrays} arrays, {n_names} names)"
            )
        names = []
        for i in range(n_names):
            (length,) = rd.unpack("Q", f"name #{i} length")
            if length > rd.remaining():
                raise BnrError(f"{path}: truncated MXNet .params file in name #{i}")
            raw = rd.read(length, f"name #{i}")
            try:
                names.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise BnrError(
                    f"{path}: corrupt MXNet .params file (name #{i} not UTF-8)"
                ) from None
        if rd.remaining():
            raise BnrError(f"{path}: {rd.remaining()} unexpected trailing bytes after the names")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise BnrError(f"{path}: duplicate parameter names {dup[:5]}")
    return dict(zip(names, arrays, strict=True))


_FLAGS = {dt: flag for flag, dt in _DTYPES.items()}


def write_mxnet_params(
    path: str | os.PathLike[str],
    params: Mapping[str, np.ndarray],
    version: str = "v2",
) -> None:
    """Write ``params`` in MXNet's NDArray-list format (for tests; no bfloat16, dense only).

    ``version``: ``"legacy"`` (pre-2017 records: uint32 ndim and dims, no magic, as in the
    ademxapp ImageNet files), ``"v1"`` or ``"v2"`` (what current ``mx.nd.save`` writes).
    """
    if version not in ("legacy", "v1", "v2"):
        raise ValueError(f"unknown MXNet record version {version!r}")
    out = [struct.pack("<QQQ", LIST_MAGIC, 0, len(params))]
    for name, value in params.items():
        arr = np.ascontiguousarray(value)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
        if dtype not in _FLAGS:
            raise ValueError(f"{name}: dtype {arr.dtype} has no MXNet flag")
        if arr.ndim == 0:
            raise ValueError(f"{name}: scalars are not supported")
        if version == "legacy":
            out.append(struct.pack(f"<I{arr.ndim}I", arr.ndim, *arr.shape))
        else:
            head = struct.pack("<I", NDARRAY_V2_MAGIC if version == "v2" else NDARRAY_V1_MAGIC)
            if version == "v2":
                head += struct.pack("<i", 0)  # dense storage
            out.append(head + struct.pack(f"<i{arr.ndim}q", arr.ndim, *arr.shape))
        out.append(struct.pack("<iii", 1, 0, _FLAGS[dtype]))  # cpu(0), dtype flag
        out.append(arr.astype(dtype, copy=False).tobytes())
    out.append(struct.pack("<Q", len(params)))
    for name in params:
        raw = name.encode("utf-8")
        out.append(struct.pack("<Q", len(raw)) + raw)
    Path(path).write_bytes(b"".join(out))
