"""A step's plan is filled by name from its params blocks (bnr/pipeline/resolve.py), so a new
key reaches the library without a line that copies it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bnr.pipeline.resolve import plan_from_blocks


@dataclass(frozen=True)
class DatasetBlock:  # like datasets.<d>.train_x
    lr: float = 0.1
    epochs: int = 3


@dataclass(frozen=True)
class GlobalBlock:  # like train_x
    momentum: float = 0.9
    new_knob: int = 7  # the hyperparameter just added to the schema


@dataclass(frozen=True)
class Plan:
    root: str  # resolved by the step
    lr: float
    epochs: int
    momentum: float
    new_knob: int  # ... and the plan field of the same name
    protocol: dict = field(default_factory=dict)


def test_fields_are_filled_by_name_and_given_values_win() -> None:
    plan = plan_from_blocks(Plan, (DatasetBlock(lr=0.5), GlobalBlock()), root="/data",
                            epochs=9)
    assert plan == Plan(root="/data", lr=0.5, epochs=9, momentum=0.9, new_knob=7)


def test_a_field_no_block_has_or_two_blocks_have_is_an_error() -> None:
    with pytest.raises(TypeError, match="Plan.root: 0 params blocks"):
        plan_from_blocks(Plan, (DatasetBlock(), GlobalBlock()))

    @dataclass(frozen=True)
    class Clash:
        lr: float = 0.2

    with pytest.raises(TypeError, match="Plan.lr: 2 params blocks"):
        plan_from_blocks(Plan, (DatasetBlock(), GlobalBlock(), Clash()), root="/data")
