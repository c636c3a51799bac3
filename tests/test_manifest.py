"""The dataset manifest: an edited image in an existing (symlinked) copy changes it, an
unchanged copy gives the identical file without re-reading the images."""

import os
from pathlib import Path

from bnr.data import manifest
from bnr.data.manifest import build_manifest, write_manifest
from tests.conftest import write_voc_tree


def test_manifest_follows_an_existing_copy_and_sees_an_edited_image(tmp_path: Path,
                                                                    monkeypatch) -> None:
    copy = write_voc_tree(tmp_path / "elsewhere" / "VOC2012", {"train": ["a", "b"]})
    root = tmp_path / "data" / "voc2012"
    root.parent.mkdir()
    root.symlink_to(copy, target_is_directory=True)  # what download.existing_root makes
    out, cache = tmp_path / "data" / "voc2012.manifest.tsv", tmp_path / "cache.json"
    assert write_manifest(root, out, cache) == 6  # 2 JPEGs, 2 masks, 1 split, cls_labels.json
    first = out.read_text()
    assert "JPEGImages/a.jpg\t" in first and first.startswith("path\tsize\tsha256\n")

    reads = []
    real_sha = manifest.sha256_file
    monkeypatch.setattr(manifest, "sha256_file", lambda p: reads.append(p.name) or real_sha(p))
    assert build_manifest(root, cache) == first and reads == []  # unchanged: from the cache

    image = copy / "JPEGImages" / "a.jpg"
    data = bytearray(image.read_bytes())
    data[-3] ^= 0xFF  # same size, other content
    image.write_bytes(bytes(data))
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    write_manifest(root, out, cache)
    assert reads == ["a.jpg"]
    changed = out.read_text()
    diff = set(changed.splitlines()) ^ set(first.splitlines())
    assert {line.split("\t")[0] for line in diff} == {"JPEGImages/a.jpg"}
