"""Registered models: register, describe, tag, rename, archive, restore, per-model policy."""

from __future__ import annotations

import pytest

from events.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidTransitionError,
    NotFoundError,
    ValidationError,
)
from events.model.commands import (
    ArchiveModel,
    ClearModelPolicy,
    RegisterModel,
    RegisterVersion,
    RemoveModelTags,
    RenameModel,
    RestoreModel,
    SetModelPolicy,
    SetModelTags,
    UpdateModelDescription,
)
from events.model.events import (
    ModelArchived,
    ModelDescriptionUpdated,
    ModelPolicyCleared,
    ModelPolicySet,
    ModelRegistered,
    ModelRenamed,
    ModelRestored,
    ModelTagsRemoved,
    ModelTagsSet,
)
from events.model.state import ModelState
from events.names import MAX_TAGS
from events.policy import GovernancePolicy, TransitionRule
from events.stages import Stage
from tests.unit.domain_helpers import (
    MODEL_ID,
    cmd,
    content,
    given,
    policy_set,
    registered,
    when,
    with_versions,
)

STRICT = GovernancePolicy(
    transitions=(TransitionRule(from_stage=Stage.STAGING, to_stage=Stage.PRODUCTION, approvals=2),)
)


def test_registering_a_model_records_its_name_owner_description_and_tags() -> None:
    command = cmd(
        RegisterModel,
        model_id=MODEL_ID,
        name="churn",
        owner="team-risk",
        description="Predicts churn",
        tags={"team": "risk"},
    )

    assert when(command, ModelState()) == [
        ModelRegistered(
            model_id=MODEL_ID,
            name="churn",
            description="Predicts churn",
            tags={"team": "risk"},
            owner="team-risk",
        )
    ]


def test_a_model_stream_is_registered_only_once() -> None:
    with pytest.raises(AlreadyExistsError):
        when(cmd(RegisterModel, model_id=MODEL_ID, name="other", owner="o"), given(registered()))


def test_a_model_name_outside_the_safe_set_is_rejected() -> None:
    with pytest.raises(ValidationError) as error:
        when(cmd(RegisterModel, model_id=MODEL_ID, name="churn model", owner="o"), ModelState())
    assert (error.value.field, error.value.rule) == ("name", "pattern")


def test_a_model_id_with_a_colon_is_rejected_so_stream_ids_stay_unambiguous() -> None:
    with pytest.raises(ValidationError) as error:
        when(cmd(RegisterModel, model_id="a:b", name="churn", owner="o"), ModelState())
    assert error.value.field == "model_id"


def test_a_command_without_an_actor_is_rejected() -> None:
    with pytest.raises(ValidationError) as error:
        when(cmd(UpdateModelDescription, actor="", description="x"), given(registered()))
    assert error.value.field == "actor"


def test_commands_on_an_empty_stream_say_the_model_is_not_found() -> None:
    with pytest.raises(NotFoundError):
        when(cmd(UpdateModelDescription, description="x"), ModelState())


def test_updating_the_description_records_it_and_the_same_text_records_nothing() -> None:
    state = given(registered())
    assert when(cmd(UpdateModelDescription, description="new"), state) == [
        ModelDescriptionUpdated(description="new")
    ]
    assert when(cmd(UpdateModelDescription, description=""), state) == []


def test_setting_tags_records_only_the_changed_entries() -> None:
    state = given(registered(), ModelTagsSet(tags={"team": "risk", "tier": "1"}))
    assert when(cmd(SetModelTags, tags={"team": "risk", "tier": "2", "pii": "no"}), state) == [
        ModelTagsSet(tags={"tier": "2", "pii": "no"})
    ]
    assert when(cmd(SetModelTags, tags={"team": "risk"}), state) == []


def test_removing_tags_records_only_tags_that_are_set() -> None:
    state = given(registered(), ModelTagsSet(tags={"team": "risk"}))
    assert when(cmd(RemoveModelTags, keys=("team", "absent")), state) == [
        ModelTagsRemoved(keys=("team",))
    ]
    assert when(cmd(RemoveModelTags, keys=("absent",)), state) == []
    assert (
        given(
            registered(), ModelTagsSet(tags={"team": "risk"}), ModelTagsRemoved(keys=("team",))
        ).tags
        == {}
    )


def test_a_model_cannot_hold_more_tags_than_the_limit() -> None:
    state = given(registered(), ModelTagsSet(tags={f"k{i}": "v" for i in range(MAX_TAGS)}))
    with pytest.raises(ValidationError) as error:
        when(cmd(SetModelTags, tags={"one-more": "v"}), state)
    assert error.value.rule == "too_many"


def test_renaming_records_the_old_and_new_name_so_the_shell_can_move_the_mapping() -> None:
    state = given(registered("churn"))
    assert when(cmd(RenameModel, new_name="churn-v2"), state) == [
        ModelRenamed(old_name="churn", new_name="churn-v2")
    ]
    assert (
        given(registered("churn"), ModelRenamed(old_name="churn", new_name="churn-v2")).name
        == "churn-v2"
    )


def test_renaming_to_the_current_name_records_nothing_and_a_bad_name_is_rejected() -> None:
    state = given(registered("churn"))
    assert when(cmd(RenameModel, new_name="churn"), state) == []
    with pytest.raises(ValidationError) as error:
        when(cmd(RenameModel, new_name="bad name"), state)
    assert error.value.field == "new_name"


def test_archiving_needs_a_reason() -> None:
    with pytest.raises(ValidationError) as error:
        when(cmd(ArchiveModel, reason=" "), given(registered()))
    assert (error.value.field, error.value.rule) == ("reason", "required")


def test_an_archived_model_keeps_its_history_and_refuses_changes_until_restored() -> None:
    state = given(with_versions(2), ModelArchived(reason="retired"))
    assert state.archived
    assert set(state.versions) == {1, 2}
    with pytest.raises(ConflictError):
        when(cmd(RegisterVersion, content=content()), state)
    assert when(cmd(RestoreModel, reason="needed again"), state) == [
        ModelRestored(reason="needed again")
    ]
    restored = given(
        with_versions(2), ModelArchived(reason="retired"), ModelRestored(reason="back")
    )
    assert not restored.archived
    assert set(restored.versions) == {1, 2}


def test_archiving_an_archived_model_or_restoring_an_active_one_is_an_invalid_transition() -> None:
    with pytest.raises(InvalidTransitionError):
        when(cmd(ArchiveModel, reason="again"), given(registered(), ModelArchived(reason="x")))
    with pytest.raises(InvalidTransitionError):
        when(cmd(RestoreModel, reason="why"), given(registered()))


def test_a_model_policy_is_validated_recorded_and_cleared() -> None:
    state = given(registered())
    assert when(cmd(SetModelPolicy, policy=STRICT, comment="four eyes"), state) == [
        ModelPolicySet(policy=STRICT, comment="four eyes")
    ]
    assert when(cmd(SetModelPolicy, policy=STRICT), given(registered(), policy_set(STRICT))) == []
    assert when(
        cmd(ClearModelPolicy, comment="back to default"), given(registered(), policy_set(STRICT))
    ) == [ModelPolicyCleared(comment="back to default")]
    assert when(cmd(ClearModelPolicy), state) == []


def test_an_invalid_model_policy_is_rejected_naming_the_field() -> None:
    bad = GovernancePolicy(
        transitions=(TransitionRule(from_stage=Stage.ARCHIVED, to_stage=Stage.STAGING),)
    )
    with pytest.raises(ValidationError) as error:
        when(cmd(SetModelPolicy, policy=bad), given(registered()))
    assert (error.value.field, error.value.rule) == ("policy.transitions[0]", "archived_is_final")
