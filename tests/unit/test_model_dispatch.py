"""The model stream's dispatch tables: every command has a decision, every event a fold step.

``decide`` and ``evolve`` find their handler by the exact type of what they are given, so
mypy's exhaustiveness check of a ``match`` no longer covers them: these tests do.
"""

from __future__ import annotations

from typing import ClassVar, get_args

import pytest

from events.base import Command, Event
from events.model.commands import ModelCommand
from events.model.decider import DECIDE_BY_COMMAND, MODEL, decide
from events.model.events import MODEL_EVENT_TYPES, ModelEvent
from events.model.evolve import EVOLVE_BY_EVENT, evolve
from tests.unit.domain_helpers import NOW


class Unrelated(Command, frozen=True, kw_only=True):
    pass


class Foreign(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "test.foreign"


def test_every_model_command_has_exactly_one_decision() -> None:
    assert set(DECIDE_BY_COMMAND) == set(get_args(ModelCommand))


def test_every_model_event_has_exactly_one_fold_step() -> None:
    assert set(EVOLVE_BY_EVENT) == set(get_args(ModelEvent)) == set(MODEL_EVENT_TYPES)


def test_a_command_of_another_stream_is_a_programming_error_that_names_it() -> None:
    # given a command the model stream does not know
    command = Unrelated(actor="alice", now=NOW)
    # when it is decided, then the type error names it (not a DomainError: no 4xx for a bug)
    with pytest.raises(TypeError, match="Unrelated is not a command of the model stream"):
        decide(command, MODEL.initial_state())  # type: ignore[arg-type]


def test_an_event_of_another_stream_is_a_programming_error_that_names_it() -> None:
    with pytest.raises(TypeError, match="Foreign is not an event of the model stream"):
        evolve(MODEL.initial_state(), Foreign())  # type: ignore[arg-type]
