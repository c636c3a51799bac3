"""Params -> the values the library takes, where several steps resolve a key alike (a step
resolves the rest of what it declared itself; the library never sees ``Params``)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from bnr.config.params import Params
from bnr.weights.pretrained import stage_weights


def weights_file(params: Params, block: str) -> str:
    """The weights file ``<block>.pretrained`` means for the training stage ``block``
    (:func:`bnr.weights.pretrained.stage_weights`; the segmenter's follows
    ``train_segmenter.arch``). "" = from scratch."""
    arch = params.train_segmenter.arch if block == "train_segmenter" else "largefov"
    return stage_weights(block, getattr(params, block).pretrained, params.dataset, arch)


Plan = TypeVar("Plan")


def plan_from_blocks(plan_type: type[Plan], blocks: tuple[Any, ...], **given: Any) -> Plan:
    """A frozen plan whose fields are filled by name from params blocks.

    Every field of ``plan_type`` not in ``given`` (the values the step resolves itself: paths,
    weights files, settings objects) is read from the one block of ``blocks`` (e.g. the
    dataset's ``datasets.<d>.train_cam`` and the global ``train_cam``) that has a key of that
    name. A field no block has, or that two blocks have, is a programming error (TypeError).
    So a new key of a block reaches the library by adding a field of the same name to the plan.
    """
    values = dict(given)
    for field in dataclasses.fields(plan_type):
        if field.name in values or not field.init:
            continue
        owners = [b for b in blocks if field.name in _keys(b)]
        if len(owners) != 1:
            has_default = (field.default is not dataclasses.MISSING
                           or field.default_factory is not dataclasses.MISSING)
            if not owners and has_default:
                continue
            raise TypeError(f"{plan_type.__name__}.{field.name}: {len(owners)} params blocks "
                            "have this key (one must, or give it explicitly)")
        values[field.name] = getattr(owners[0], field.name)
    return plan_type(**values)


def _keys(block: Any) -> set[str]:
    """The keys of a params block (a dataclass, or its declared-params view)."""
    return {f.name for f in dataclasses.fields(getattr(block, "_obj", block))}
