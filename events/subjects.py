"""Pseudonymous subjects and their erasure: the ``subject:{subject_id}`` stream. Pure.

Events name who acted by an opaque subject id (``subj_`` + 26 base32 characters), never by
a name: the shell keeps the id -> name link in a table outside the hashed log, and erasing
a person deletes that link. ``subject.erased`` records that it happened; it holds the
subject id only, never the name, the e-mail address or the reason (which may itself name
the person), so the log stays free of what was erased.
"""

from __future__ import annotations

import re
from typing import ClassVar, assert_never

import msgspec

from events.base import Command, Decider, Event
from events.errors import ConflictError, ValidationError
from events.streams import SUBJECT_TYPE

STREAM_TYPE = SUBJECT_TYPE
SUBJECT_ID = re.compile(r"subj_[a-z2-7]{26}")


def is_subject_id(value: str) -> bool:
    return SUBJECT_ID.fullmatch(value) is not None


def validate_subject_id(value: str, field: str = "subject_id") -> str:
    if not is_subject_id(value):
        raise ValidationError(field, "pattern", f"{field} is subj_ and 26 of a-z 2-7")
    return value


class SubjectErased(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "subject.erased"
    subject_id: str


SubjectEvent = SubjectErased
SUBJECT_EVENT_TYPES: tuple[type[Event], ...] = (SubjectErased,)


class EraseSubject(Command, frozen=True, kw_only=True):
    subject_id: str


SubjectCommand = EraseSubject


class SubjectState(msgspec.Struct, frozen=True, kw_only=True):
    subject_id: str = ""
    erased: bool = False


def initial_state() -> SubjectState:
    return SubjectState()


def evolve(state: SubjectState, event: SubjectEvent) -> SubjectState:
    match event:
        case SubjectErased():
            return SubjectState(subject_id=event.subject_id, erased=True)
        case _:
            assert_never(event)


def decide(command: SubjectCommand, state: SubjectState) -> list[SubjectEvent]:
    match command:
        case EraseSubject():
            validate_subject_id(command.subject_id)
            if state.erased:
                raise ConflictError(
                    f"subject {command.subject_id} is erased already",
                    subject_id=command.subject_id,
                )
            return [SubjectErased(subject_id=command.subject_id)]
        case _:
            assert_never(command)


SUBJECTS: Decider[SubjectState, SubjectCommand, SubjectEvent] = Decider(
    stream_type=STREAM_TYPE,
    initial_state=initial_state,
    evolve=evolve,
    decide=decide,
    state_type=SubjectState,
)
