"""Deleting a model: a tombstone that cancels open requests, refuses a model in production,
and after which the stream accepts nothing."""

from __future__ import annotations

import pytest

from events.errors import InvalidTransitionError, NotFoundError, ValidationError
from events.model.commands import (
    ArchiveModel,
    DeleteModel,
    RegisterVersion,
    RestoreModel,
    SetModelTags,
)
from events.model.events import ModelArchived, ModelDeleted, PromotionCancelled
from events.stages import Stage
from tests.unit.domain_helpers import (
    cmd,
    content,
    given,
    in_production,
    registered,
    requested,
    when,
    with_versions,
)


def test_deleting_records_a_tombstone_with_the_name_and_the_reason() -> None:
    assert when(cmd(DeleteModel, reason="created by mistake"), given(with_versions(2))) == [
        ModelDeleted(name="churn", reason="created by mistake")
    ]


def test_deleting_needs_a_reason() -> None:
    with pytest.raises(ValidationError) as error:
        when(cmd(DeleteModel, reason=" "), given(registered()))
    assert (error.value.field, error.value.rule) == ("reason", "required")


def test_open_promotion_requests_are_cancelled_in_the_same_decision() -> None:
    # given two open requests and one already cancelled
    state = given(
        with_versions(2),
        requested("r2", 2, Stage.STAGING),
        requested("r1", 1, Stage.STAGING),
        requested("r0", 1, alias="champion"),
        PromotionCancelled(request_id="r0", cancelled_by="bob", comment="no"),
    )
    # when the model is deleted
    events = when(cmd(DeleteModel, actor="root", reason="retired"), state)
    # then the two open ones are cancelled by the deleter, in id order, then the tombstone
    assert events == [
        PromotionCancelled(request_id="r1", cancelled_by="root", comment="model deleted: retired"),
        PromotionCancelled(request_id="r2", cancelled_by="root", comment="model deleted: retired"),
        ModelDeleted(name="churn", reason="retired"),
    ]


def test_a_model_with_a_version_in_production_is_not_deleted() -> None:
    state = given(with_versions(1), in_production(1))
    with pytest.raises(InvalidTransitionError) as error:
        when(cmd(DeleteModel, reason="retired"), state)
    assert "version 1 in production" in str(error.value)


def test_an_archived_model_can_be_deleted() -> None:
    state = given(with_versions(1), ModelArchived(reason="old"))
    assert when(cmd(DeleteModel, reason="gone"), state) == [
        ModelDeleted(name="churn", reason="gone")
    ]


@pytest.mark.parametrize(
    "command",
    [
        cmd(DeleteModel, reason="again"),
        cmd(RestoreModel, reason="back"),
        cmd(ArchiveModel, reason="hide"),
        cmd(SetModelTags, tags={"team": "risk"}),
        cmd(RegisterVersion, content=content()),
    ],
    ids=["delete", "restore", "archive", "tags", "register-version"],
)
def test_a_deleted_model_accepts_nothing_more(command: object) -> None:
    state = given(with_versions(1), ModelDeleted(name="churn", reason="gone"))
    assert state.deleted
    with pytest.raises(NotFoundError, match="was deleted"):
        when(command, state)
