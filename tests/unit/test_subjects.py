"""Subjects (events.subjects) and the actor comparison rules rely on. Pure."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from events.base import acted_as
from events.errors import ConflictError, ValidationError
from events.model.commands import ApprovePromotion
from events.policy import DEFAULT_POLICY
from events.subjects import SUBJECTS, EraseSubject, SubjectErased, is_subject_id
from service.identity.subjects import new_subject_id

NOW = datetime(2026, 12, 6, tzinfo=UTC)
SUBJECT = "subj_" + "b3" * 13


def test_new_subject_ids_are_random_and_of_one_shape() -> None:
    ids = {new_subject_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(is_subject_id(i) for i in ids)
    assert not is_subject_id("alice") and not is_subject_id("subj_ABC")


def test_a_subject_is_erased_once_and_the_event_holds_its_id_only() -> None:
    # given a subject never erased
    command = EraseSubject(actor="subj_" + "c4" * 13, now=NOW, subject_id=SUBJECT)
    # when it is erased
    events = SUBJECTS.decide(command, SUBJECTS.initial_state())
    # then one event holds its id, and a second erasure is refused
    assert events == [SubjectErased(subject_id=SUBJECT)]
    with pytest.raises(ConflictError):
        SUBJECTS.decide(command, SUBJECTS.fold(events))


def test_only_a_subject_id_can_be_erased() -> None:
    with pytest.raises(ValidationError) as refused:
        SUBJECTS.decide(
            EraseSubject(actor="admin", now=NOW, subject_id="alice"), SUBJECTS.initial_state()
        )
    assert refused.value.details["field"] == "subject_id"


def test_an_actor_is_the_same_under_its_subject_id_and_its_legacy_name() -> None:
    command = ApprovePromotion(
        actor=SUBJECT,
        now=NOW,
        registry_policy=DEFAULT_POLICY,
        request_id="r1",
        actor_aliases=("dora",),
    )
    assert acted_as(command, SUBJECT) and acted_as(command, "dora")
    assert not acted_as(command, "carl")
