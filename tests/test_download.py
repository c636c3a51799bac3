"""Downloads, sources and archive extraction against a local HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bnr.data import transfer
from bnr.data.archives import safe_extract
from bnr.data.download import download_file, fetch_source
from bnr.data.sources import SOURCES, resolve_source
from bnr.errors import BnrError

try:
    from tests.httpserver import LocalServer, closed_port
except ImportError:  # tests/ is not a package and the repo root is not on sys.path
    from httpserver import LocalServer, closed_port

DATA = bytes(range(256)) * 4096  # 1 MiB, a few chunks... and not all the same byte
FAST = {"progress": False, "backoff": 0.0, "timeout": 5.0}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


@pytest.fixture
def big() -> bytes:
    return os.urandom(3 * (1 << 20) + 123)  # over 3 chunks


# --- download_file ------------------------------------------------------------------------


def test_plain_download_verifies_md5_and_sha256(server: LocalServer, tmp_path: Path) -> None:
    url = server.add("a.bin", DATA)
    out = download_file(url, tmp_path / "a.bin", md5=md5(DATA), sha256=sha256(DATA), **FAST)
    assert out.read_bytes() == DATA
    assert not (tmp_path / "a.bin.part").exists()
    assert server.ranges == [("/a.bin", None)]


def test_sha256_prefix_accepted(server: LocalServer, tmp_path: Path) -> None:
    url = server.add("a.bin", DATA)
    download_file(url, tmp_path / "a.bin", sha256=sha256(DATA)[:8], **FAST)
    assert (tmp_path / "a.bin").read_bytes() == DATA


def test_resume_after_truncated_transfer(server: LocalServer, tmp_path: Path, big: bytes) -> None:
    url = server.add("big.bin", big)
    server.fault("big.bin", drop_at=1_500_000)  # once
    out = download_file(url, tmp_path / "big.bin", md5=md5(big), **FAST)
    assert out.read_bytes() == big
    assert server.hits["/big.bin"] == 2
    assert server.ranges[1] == ("/big.bin", "bytes=1500000-")


def test_resume_from_part_left_by_earlier_run(
    server: LocalServer, tmp_path: Path, big: bytes
) -> None:
    url = server.add("big.bin", big)
    (tmp_path / "big.bin.part").write_bytes(big[:1000])
    download_file(url, tmp_path / "big.bin", md5=md5(big), **FAST)
    assert (tmp_path / "big.bin").read_bytes() == big
    assert server.ranges == [("/big.bin", "bytes=1000-")]


def test_server_ignoring_range_restarts(server: LocalServer, tmp_path: Path, big: bytes) -> None:
    url = server.add("big.bin", big)
    (tmp_path / "big.bin.part").write_bytes(b"garbage that is not the file start")
    server.fault("big.bin", ignore_range=True)
    download_file(url, tmp_path / "big.bin", md5=md5(big), **FAST)
    assert (tmp_path / "big.bin").read_bytes() == big
    assert server.hits["/big.bin"] == 1


def test_complete_part_gets_416_and_is_kept(server: LocalServer, tmp_path: Path) -> None:
    url = server.add("a.bin", DATA)
    (tmp_path / "a.bin.part").write_bytes(DATA)
    download_file(url, tmp_path / "a.bin", md5=md5(DATA), **FAST)
    assert (tmp_path / "a.bin").read_bytes() == DATA


def test_always_dropping_server_gives_clear_error(
    server: LocalServer, tmp_path: Path, big: bytes
) -> None:
    url = server.add("big.bin", big)
    server.fault("big.bin", drop_at=2_000_000, always=True)
    with pytest.raises(BnrError) as err:
        download_file(url, tmp_path / "big.bin", md5=md5(big), retries=2, **FAST)
    msg = str(err.value)
    assert "dropping the connection" in msg
    assert f"2,000,000 of {len(big):,} bytes" in msg
    assert "\n" not in msg
    assert not (tmp_path / "big.bin").exists()
    assert (tmp_path / "big.bin.part").stat().st_size == 2_000_000  # kept for a later resume
    assert server.hits["/big.bin"] == 4  # first + 3 attempts without progress (retries=2)


def test_backoff_is_exponential(server: LocalServer, tmp_path: Path) -> None:
    url = server.add("x.bin", DATA)
    server.fault("x.bin", status=503)
    waits: list[float] = []
    with pytest.raises(BnrError, match="HTTP 503"):
        download_file(
            url, tmp_path / "x.bin", retries=3, backoff=0.5, progress=False, sleep=waits.append
        )
    assert waits == [0.5, 1.0, 2.0]


def test_wrong_checksum_kept_aside(server: LocalServer, tmp_path: Path) -> None:
    url = server.add("a.bin", DATA)
    wrong = "0" * 32
    with pytest.raises(BnrError) as err:
        download_file(url, tmp_path / "a.bin", md5=wrong, **FAST)
    msg = str(err.value)
    assert wrong in msg and md5(DATA) in msg
    assert not (tmp_path / "a.bin").exists()
    aside = tmp_path / f"a.bin.corrupt-{md5(DATA)}"
    assert aside.read_bytes() == DATA
    assert str(aside) in msg


def test_wrong_sha256_names_both_sums(server: LocalServer, tmp_path: Path) -> None:
    url = server.add("a.bin", DATA)
    with pytest.raises(BnrError) as err:
        download_file(url, tmp_path / "a.bin", sha256="ab" * 32, **FAST)
    assert "ab" * 32 in str(err.value) and sha256(DATA) in str(err.value)
    assert (tmp_path / f"a.bin.corrupt-{sha256(DATA)}").is_file()


@pytest.mark.parametrize("status", [404, 403])
def test_http_error_status(server: LocalServer, tmp_path: Path, status: int) -> None:
    url = server.add("a.bin", DATA)
    server.fault("a.bin", status=status)
    with pytest.raises(BnrError, match=f"HTTP {status}") as err:
        download_file(url, tmp_path / "a.bin", **FAST)
    assert url in str(err.value)
    assert server.hits["/a.bin"] == 1  # not retried


def test_unreachable_host(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/a.bin"
    with pytest.raises(BnrError, match=r"cannot reach 127\.0\.0\.1") as err:
        download_file(url, tmp_path / "a.bin", retries=1, **FAST)
    assert "2 attempts" in str(err.value)


def test_present_verified_file_not_downloaded_again(server: LocalServer, tmp_path: Path) -> None:
    url = server.add("a.bin", DATA)
    download_file(url, tmp_path / "a.bin", md5=md5(DATA), **FAST)
    download_file(url, tmp_path / "a.bin", md5=md5(DATA), **FAST)
    assert server.hits["/a.bin"] == 1


def test_present_bad_file_is_set_aside_and_redownloaded(
    server: LocalServer, tmp_path: Path
) -> None:
    url = server.add("a.bin", DATA)
    (tmp_path / "a.bin").write_bytes(b"old")
    download_file(url, tmp_path / "a.bin", md5=md5(DATA), **FAST)
    assert (tmp_path / "a.bin").read_bytes() == DATA
    assert (tmp_path / f"a.bin.corrupt-{md5(b'old')}").read_bytes() == b"old"


def test_disk_full(server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = server.add("a.bin", DATA)

    def full(fh: io.BufferedWriter, block: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transfer, "write_chunk", full)
    with pytest.raises(BnrError, match="disk full"):
        download_file(url, tmp_path / "a.bin", **FAST)


def test_unsupported_scheme_and_file_url(tmp_path: Path) -> None:
    with pytest.raises(BnrError, match="unsupported URL scheme 'ftp'"):
        download_file("ftp://example.org/x", tmp_path / "x", **FAST)
    src = tmp_path / "mirror" / "a.bin"
    src.parent.mkdir()
    src.write_bytes(DATA)
    out = download_file(src.as_uri(), tmp_path / "a.bin", md5=md5(DATA), **FAST)
    assert out.read_bytes() == DATA
    with pytest.raises(BnrError, match="not found"):
        download_file((tmp_path / "nope").as_uri(), tmp_path / "b.bin", **FAST)


def test_no_checksum_logs_sha256(
    server: LocalServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = server.add("a.bin", DATA)
    download_file(url, tmp_path / "a.bin", **FAST)
    assert sha256(DATA) in caplog.text


# --- sources -------------------------------------------------------------------------------


def test_source_table_and_overrides(server: LocalServer, tmp_path: Path) -> None:
    assert SOURCES["voc2012_trainval"].md5 == "6cd6e144f989b92b3379bac3b3de84fd"
    assert SOURCES["conformer_s"].verified == "sha256-prefix"
    assert SOURCES["resnet38_pytorch"].verified == "none"
    for src in SOURCES.values():
        assert src.url.startswith("http") and src.filename and src.origin
    url = server.add("w.pth", DATA)
    src = resolve_source("resnet38_pytorch", {"resnet38_pytorch": {"url": url}})
    with pytest.raises(BnrError, match="no checksum known"):
        fetch_source(src, tmp_path, require_checksum=True, **FAST)
    assert server.hits["/w.pth"] == 0
    src = resolve_source("sbd", {"sbd": {"url": url, "sha256": sha256(DATA)}})
    assert src.md5 is None and src.sha256 == sha256(DATA)  # new checksum replaces the old one
    assert fetch_source(src, tmp_path, **FAST).name == "benchmark.tgz"
    with pytest.raises(BnrError, match=r"sources\.sbd\.md5"):
        resolve_source("sbd", {"sbd": {"md5": "xyz"}})
    with pytest.raises(BnrError, match=r"sources\.sbd\.mirror"):
        resolve_source("sbd", {"sbd": {"mirror": url}})
    with pytest.raises(BnrError, match="unknown source"):
        resolve_source("imagenet", {})


# --- archives ------------------------------------------------------------------------------


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _outside_untouched(tmp_path: Path) -> set[str]:
    return {p.name for p in tmp_path.iterdir()}


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_file("ok/../../evil"), "'..'"),
        (_file("/tmp/bnr-test-evil-abs"), "absolute path"),
        (_link("ok/link", "../../outside"), "outside the destination"),
        (_link("ok/abslink", "/etc/passwd"), "absolute path"),
        (_link("ok/hard", "../x", tarfile.LNKTYPE), "outside the destination"),
    ],
)
def test_unsafe_tar_members_refused(tmp_path: Path, member: tarfile.TarInfo, reason: str) -> None:
    data = None if member.issym() or member.islnk() else b"evil"
    archive = _tar(tmp_path / "bad.tar", [(_file("ok/good.txt"), b"good"), (member, data)])
    before = _outside_untouched(tmp_path)
    with pytest.raises(BnrError, match=reason) as err:
        safe_extract(archive, tmp_path / "out", progress=False)
    assert "bad.tar" in str(err.value) and member.name in str(err.value)
    assert not (tmp_path / "out").exists()
    assert _outside_untouched(tmp_path) == before
    assert not Path("/tmp/bnr-test-evil-abs").exists()


def test_device_file_refused(tmp_path: Path) -> None:
    dev = tarfile.TarInfo("dev/null")
    dev.type = tarfile.CHRTYPE
    archive = _tar(tmp_path / "dev.tar", [(dev, None)])
    with pytest.raises(BnrError, match="device file"):
        safe_extract(archive, tmp_path / "out", progress=False)


def test_symlink_chain_escaping_via_realpath_refused(tmp_path: Path) -> None:
    # 'a' -> '.', then 'b' -> 'a/a/../x' is lexically 'a/x' (inside) but really '../x'.
    archive = _tar(
        tmp_path / "chain.tar", [(_link("a", "."), None), (_link("b", "a/a/../x"), None)]
    )
    with pytest.raises(BnrError, match="outside"):
        safe_extract(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_good_tar_and_zip_extract(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "good.tar.gz",
        [
            (_file("top/a.txt"), b"A"),
            (_file("top/sub/b.txt"), b"B"),
            (_link("top/l", "a.txt"), None),
        ],
    )
    safe_extract(archive, tmp_path / "out", progress=False)
    assert (tmp_path / "out/top/a.txt").read_bytes() == b"A"
    assert (tmp_path / "out/top/sub/b.txt").read_bytes() == b"B"
    assert (tmp_path / "out/top/l").read_bytes() == b"A"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    zpath = tmp_path / "good.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("z/c.txt", "C")
    safe_extract(zpath, tmp_path / "zout", progress=False)
    assert (tmp_path / "zout/z/c.txt").read_text() == "C"


def test_bad_zip_member_and_corrupt_archive(tmp_path: Path) -> None:
    zpath = tmp_path / "bad.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../evil.txt", "evil")
    with pytest.raises(BnrError, match=r"bad\.zip: member '\.\./evil\.txt'"):
        safe_extract(zpath, tmp_path / "out", progress=False)
    assert not (tmp_path / "evil.txt").exists()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(BnrError, match="not a valid or complete tar archive"):
        safe_extract(broken, tmp_path / "out", progress=False)
    with pytest.raises(BnrError, match="unsupported archive type"):
        safe_extract(tmp_path / "x.rar", tmp_path / "out", progress=False)


def test_unknown_length_without_checksum_is_refused_or_pinned(
    server: LocalServer, tmp_path: Path
) -> None:
    url = server.add("n.bin", DATA)
    server.fault("n.bin", no_length=True, drop_at=1000, always=True)
    with pytest.raises(BnrError, match="no Content-Length, no known size and no checksum"):
        download_file(url, tmp_path / "n.bin", **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing kept
    out = download_file(url, tmp_path / "n.bin", allow_unverified=True, **FAST)  # opt-in
    assert out.stat().st_size == 1000 and not (tmp_path / "n.bin.pin.json").exists()


def test_first_checked_download_pins_sha256(server: LocalServer, tmp_path: Path) -> None:
    url = server.add("p.bin", DATA)
    download_file(url, tmp_path / "p.bin", **FAST)  # Content-Length checked: pinned
    pin = json.loads((tmp_path / "p.bin.pin.json").read_text())
    assert pin["sha256"] == sha256(DATA) and pin["size"] == len(DATA)
    (tmp_path / "p.bin").unlink()
    server.fault("p.bin", no_length=True, drop_at=5000, always=True)  # truncated, no length
    with pytest.raises(BnrError, match="connection closed early|keeps dropping"):
        download_file(url, tmp_path / "p.bin", retries=0, **FAST)
    server.faults.clear()
    server.files["/p.bin"] = DATA[::-1]  # the source changed: it no longer matches the pin
    with pytest.raises(BnrError, match="checksum mismatch"):
        download_file(url, tmp_path / "p.bin", **FAST)
