"""Safe, atomic extraction of downloaded .tar / .tar.gz / .tgz / .zip archives.

Every member is checked before anything is written: absolute paths, ``..`` components, links
whose target leaves the destination, device files and FIFOs are refused with a one-line
:class:`~bnr.errors.BnrError` naming the archive and the member. Tar members are additionally
extracted with tarfile's ``filter="data"`` (which resolves already-extracted symlinks), and every
symlink is re-checked with ``realpath`` after extraction. The archive is unpacked into a
temporary sibling of ``dest`` and renamed onto ``dest`` only when complete, so ``dest`` is either
the full archive content or untouched.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import tarfile
import zipfile
from pathlib import Path

from tqdm import tqdm

from bnr.errors import BnrError
from bnr.io import atomic_path

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def archive_kind(archive: str | os.PathLike[str]) -> str:
    """'tar' or 'zip' from the file name; BnrError for anything else."""
    name = Path(archive).name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    raise BnrError(f"{archive}: unsupported archive type (expected {', '.join(ARCHIVE_SUFFIXES)})")


def _check_name(archive: Path, name: str) -> str:
    """Normalised relative member path, or BnrError if it is absolute or climbs out."""
    if "\x00" in name:
        raise BnrError(f"{archive}: member {name!r} has a NUL byte in its name; refusing")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise BnrError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BnrError(f"{archive}: member {name!r} has a '..' path component; refusing")
    return "/".join(parts)


def _check_link(archive: Path, member: str, rel: str, target: str, *, hard: bool) -> None:
    """A link target must stay inside the destination (lexically; realpath is checked later)."""
    unified = target.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise BnrError(
            f"{archive}: member {member!r} links to the absolute path {target!r}; refusing"
        )
    base = "" if hard else posixpath.dirname(rel)
    resolved = posixpath.normpath(posixpath.join(base, unified))
    if resolved == ".." or resolved.startswith("../"):
        raise BnrError(
            f"{archive}: member {member!r} links to {target!r}, outside the destination; refusing"
        )


def _check_tar_members(archive: Path, tf: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tf.getmembers()
    for m in members:
        rel = _check_name(archive, m.name)
        if m.ischr() or m.isblk():
            raise BnrError(f"{archive}: member {m.name!r} is a device file; refusing to extract")
        if m.isfifo():
            raise BnrError(f"{archive}: member {m.name!r} is a FIFO; refusing to extract")
        if m.issym() or m.islnk():
            _check_link(archive, m.name, rel, m.linkname, hard=m.islnk())
        elif not (m.isfile() or m.isdir()):
            raise BnrError(f"{archive}: member {m.name!r} has an unsupported type; refusing")
    return members


def _check_zip_members(archive: Path, zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    for info in members:
        rel = _check_name(archive, info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            # zipfile writes a link entry as a small file holding the target: check it anyway.
            target = zf.read(info).decode("utf-8", "replace")
            _check_link(archive, info.filename, rel, target, hard=False)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            raise BnrError(f"{archive}: member {info.filename!r} is a special file; refusing")
    return members


def _check_extracted_links(archive: Path, root: Path) -> None:
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if os.path.commonpath([real_root, target]) != real_root:
                    rel = os.path.relpath(path, root)
                    raise BnrError(
                        f"{archive}: member {rel!r} resolves outside the destination; refusing"
                    )


def safe_extract(
    archive: str | os.PathLike[str], dest: str | os.PathLike[str], *, progress: bool = True
) -> None:
    """Extract ``archive`` (.tar/.tar.gz/.tgz/.zip) into the directory ``dest``, atomically.

    ``dest`` ends up holding exactly the archive content (an existing ``dest`` is replaced only
    after a successful extraction). Unsafe members raise BnrError and nothing is written.
    """
    archive = Path(archive)
    kind = archive_kind(archive)
    if not archive.is_file():
        raise BnrError(f"{archive}: archive not found")
    try:
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            if kind == "tar":
                _extract_tar(archive, tmp, progress)
            else:
                _extract_zip(archive, tmp, progress)
            _check_extracted_links(archive, tmp)
    except (tarfile.ReadError, tarfile.CompressionError, zipfile.BadZipFile, EOFError) as exc:
        raise BnrError(f"{archive}: not a valid or complete {kind} archive ({exc})") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise BnrError(f"{dest}: disk full while extracting {archive}") from None
        raise BnrError(f"{archive}: extraction into {dest} failed ({exc})") from None


def _extract_tar(archive: Path, tmp: Path, progress: bool) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = _check_tar_members(archive, tf)
        has_filter = hasattr(tarfile, "data_filter")
        for m in tqdm(members, desc=f"extract {archive.name}", unit="file", disable=not progress):
            try:
                if has_filter:
                    tf.extract(m, tmp, set_attrs=not m.isdir(), filter="data")
                else:  # Python without extraction filters: our own checks above still apply
                    tf.extract(m, tmp, set_attrs=False)
            except tarfile.FilterError as exc:
                raise BnrError(f"{archive}: member {m.name!r} refused ({exc})") from None


def _extract_zip(archive: Path, tmp: Path, progress: bool) -> None:
    real_tmp = os.path.realpath(tmp)
    with zipfile.ZipFile(archive) as zf:
        members = _check_zip_members(archive, zf)
        for info in tqdm(
            members, desc=f"extract {archive.name}", unit="file", disable=not progress
        ):
            out = os.path.realpath(os.path.join(tmp, _check_name(archive, info.filename)))
            if os.path.commonpath([real_tmp, out]) != real_tmp:
                raise BnrError(f"{archive}: member {info.filename!r} escapes the destination")
            zf.extract(info, tmp)
