"""The one table of everything the ``download`` stage fetches, with its checksum and origin.

Every URL and checksum can be overridden from params (a local mirror, a moved file) with
:func:`resolve_source`. Checksums are only ever ones published by someone else or derived from
the file name; where none could be found the field is ``None`` and the download stage either
refuses (``require_checksum``) or logs the sha256 it computed so the user can pin it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bnr.errors import BnrError


@dataclass(frozen=True)
class Source:
    """One downloadable file.

    ``sha256`` is a full 64-digit digest or a prefix of at least 8 hex digits (checked as a
    prefix). ``size`` is the expected size in bytes (informational: free-space check and
    progress bar). ``origin`` says where the checksum comes from.
    """

    name: str
    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    origin: str = ""

    @property
    def verified(self) -> str:
        """'md5', 'sha256', 'sha256-prefix' or 'none': what a download of it is checked by."""
        if self.md5:
            return "md5"
        if self.sha256:
            return "sha256" if len(self.sha256) == 64 else "sha256-prefix"
        return "none"


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            name="voc2012_trainval",
            # host.robots.ox.ac.uk redirects to thor.robots.ox.ac.uk (torchvision's URL).
            url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            filename="VOCtrainval_11-May-2012.tar",
            md5="6cd6e144f989b92b3379bac3b3de84fd",
            size=1_999_639_040,
            origin="md5 from torchvision.datasets.voc.DATASET_YEAR_DICT['2012'] (0.29.1)",
        ),
        Source(
            name="sbd",
            url="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/"
            "semantic_contours/benchmark.tgz",
            filename="benchmark.tgz",
            md5="82b4d87ceb2ed10f6038a1cba92111cb",
            size=1_419_539_633,
            origin="url and md5 from torchvision.datasets.SBDataset (0.29.1)",
        ),
        Source(
            name="coco2014_train",
            url="http://images.cocodataset.org/zips/train2014.zip",
            filename="train2014.zip",
            md5="0da8c0bd3d6becc4dcb32757491aca88",
            size=13_510_573_713,
            origin="md5 as published in public download code (salesforce/LAVIS, pystiche "
            "md5-checked download, pytorchcocotools); the COCO site publishes no checksum",
        ),
        Source(
            name="coco2014_val",
            url="http://images.cocodataset.org/zips/val2014.zip",
            filename="val2014.zip",
            md5="a3d79f5ed8d289b7a7554ce06a5782b3",
            size=6_645_013_297,
            origin="md5 as published in public download code (salesforce/LAVIS, "
            "pytorchcocotools); the COCO site publishes no checksum",
        ),
        Source(
            name="coco2014_annotations",
            url="http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
            filename="annotations_trainval2014.zip",
            md5="0a379cfc70b0e71301e0f377548639bd",
            size=252_872_794,
            origin="md5 as published in public download code (pytorchcocotools, PaddleDetection"
            "-style download lists); equals the S3 ETag of the object",
        ),
        Source(
            name="conformer_s",
            url="https://download.openmmlab.com/mmclassification/v0/conformer/"
            "conformer-small-p16_3rdparty_8xb128_in1k_20211206-3065dcf5.pth",
            filename="conformer-small-p16_3rdparty_8xb128_in1k_20211206-3065dcf5.pth",
            sha256="3065dcf5",
            origin="sha256 prefix from the OpenMMLab file name (OpenMMLab names checkpoints "
            "<name>-<first 8 hex digits of sha256>); no full digest published",
        ),
        Source(
            name="resnet38_mxnet",
            # The official ademxapp link (cloudstor.aarnet.edu.au) is retired; this is the
            # Dropbox copy linked from public WSSS/UDA READMEs. md5 is what makes it safe.
            url="https://www.dropbox.com/s/n2eewzy7bn7lhk0/"
            "ilsvrc-cls_rna-a1_cls1000_ep-0001.params?dl=1",
            filename="ilsvrc-cls_rna-a1_cls1000_ep-0001.params",
            md5="ff21f45d6bf03284100dcbec571edfad",
            origin="md5 from the project REFERENCE.md (ademxapp model A1, MXNet format)",
        ),
        Source(
            name="resnet38_pytorch",
            url="https://download.visinf.tu-darmstadt.de/data/2020-cvpr-araslanov-1-stage-wseg/"
            "models/ilsvrc-cls_rna-a1_cls1000_ep-0001.pth",
            filename="ilsvrc-cls_rna-a1_cls1000_ep-0001.pth",
            origin="no published checksum (converted PyTorch copy, 1-stage-wseg); its sha256 "
            "is pinned on the first length-checked download (bnr.data.pins)",
        ),
        Source(
            name="voc2012_test",
            # The evaluation server's test images (1,456 segmentation ids); the file needs a
            # login there, so it is fetched only when download.mirrors names a copy of it.
            url="http://host.robots.ox.ac.uk:8080/eval/downloads/VOC2012test.tar",
            filename="VOC2012test.tar",
            origin="no published checksum (login-only file); its sha256 is pinned on the "
            "first length-checked download (bnr.data.pins)",
        ),
    )
}

_OVERRIDABLE = ("url", "filename", "md5", "sha256", "size")
_HEX = re.compile(r"[0-9a-fA-F]+")


def check_checksum_format(value: str | None, kind: str, *, where: str) -> str | None:
    """Return ``value`` lower-cased if it is a valid md5 / sha256 (prefix), else BnrError."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise BnrError(f"{where}: {kind} must be a hex string, got {value!r}")
    if kind == "md5" and len(value) != 32:
        raise BnrError(f"{where}: md5 must have 32 hex digits, got {len(value)}")
    if kind == "sha256" and not 8 <= len(value) <= 64:
        raise BnrError(f"{where}: sha256 must have 64 hex digits (or a prefix of >= 8)")
    return value.lower()


def resolve_source(
    name: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    table: Mapping[str, Source] | None = None,
) -> Source:
    """Return source ``name`` from ``table`` (default :data:`SOURCES`) with params overrides.

    ``overrides`` maps source names to dicts of ``url``, ``filename``, ``md5``, ``sha256``,
    ``size``; entries for other sources are ignored. Giving a new ``md5`` or ``sha256`` drops
    the other built-in checksum and the size (they would describe the old file); a checksum set
    to ``null`` or ``""`` disables that check.
    """
    table = SOURCES if table is None else table
    if name not in table:
        raise BnrError(f"sources.{name}: unknown source (known: {', '.join(sorted(table))})")
    src = table[name]
    ov = (overrides or {}).get(name) or {}
    if not isinstance(ov, Mapping):
        raise BnrError(f"sources.{name}: override must be a mapping, got {type(ov).__name__}")
    unknown = sorted(set(ov) - set(_OVERRIDABLE))
    if unknown:
        raise BnrError(
            f"sources.{name}.{unknown[0]}: unknown field (allowed: {', '.join(_OVERRIDABLE)})"
        )
    changes: dict[str, Any] = {k: ov[k] for k in _OVERRIDABLE if k in ov}
    if {"md5", "sha256"} & set(changes):
        # A new checksum describes a different file: the other built-in sum and size go too.
        changes.setdefault("md5", None)
        changes.setdefault("sha256", None)
        changes.setdefault("size", None)
    for key in ("url", "filename"):
        if key in changes and (not isinstance(changes[key], str) or not changes[key]):
            raise BnrError(f"sources.{name}.{key}: must be a non-empty string")
    if "filename" in changes and ("/" in changes["filename"] or changes["filename"] in (".", "..")):
        raise BnrError(f"sources.{name}.filename: must be a plain file name")
    size = changes.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise BnrError(f"sources.{name}.size: must be a non-negative integer")
    for kind in ("md5", "sha256"):
        if kind in changes:
            changes[kind] = check_checksum_format(
                changes[kind], kind, where=f"sources.{name}.{kind}"
            )
    if changes:
        changes["origin"] = "overridden in params"
        if "url" in changes and not ({"md5", "sha256"} & set(ov)):
            changes["origin"] = f"url overridden in params; checksum: {src.origin}"
    return dataclasses.replace(src, **changes)


def compare_with_published(
    counts: dict[str, int | None], published: dict[str, int], what: str
) -> dict[str, Any]:
    """The dataset.json block comparing prepared ``counts`` with the ``published`` ones;
    ``what`` names the set in the warnings (e.g. "the published VOC 2012 set")."""
    warnings = [f"{key}: {counts.get(key)} images, {what} has {expected}"
                for key, expected in published.items() if counts.get(key) != expected]
    return {"counts": counts, "published_counts": dict(published),
            "matches_published": not warnings, "warnings": warnings}


def mirror_overrides(mirrors: Mapping[str, str], table: Mapping[str, Any] | None = None) -> dict:
    """``download.mirrors`` (name -> URL) as :func:`~bnr.data.sources.resolve_source`
    overrides; an unknown source name is a BnrError listing the known ones."""
    table = SOURCES if table is None else table
    unknown = sorted(set(mirrors) - set(table))
    if unknown:
        raise BnrError(
            f"download.mirrors.{unknown[0]}: unknown source (known: {', '.join(sorted(table))})"
        )
    return {name: {"url": url} for name, url in mirrors.items()}
