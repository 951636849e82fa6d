"""Model versions: numbering, immutable content, metadata, deprecation."""

from __future__ import annotations

import pytest

from events.errors import InvalidTransitionError, NotFoundError, ValidationError
from events.model.commands import (
    DeprecateVersion,
    RegisterVersion,
    RemoveVersionTags,
    SetAlias,
    SetVersionTags,
    TransitionStage,
    UpdateVersionDescription,
)
from events.model.events import (
    VersionDeprecated,
    VersionDescriptionUpdated,
    VersionRegistered,
    VersionTagsRemoved,
    VersionTagsSet,
)
from events.stages import Stage
from events.version_content import VersionContent, content_digest
from tests.unit.domain_helpers import (
    cmd,
    content,
    given,
    registered,
    transitioned,
    when,
    with_versions,
)


def test_the_first_version_is_number_one_in_development_with_its_registrant_and_digest() -> None:
    command = cmd(
        RegisterVersion,
        actor="carol",
        content=content(),
        description="baseline",
        tags={"algo": "xgb"},
    )

    assert when(command, given(registered())) == [
        VersionRegistered(
            version=1,
            content=content(),
            content_digest=content_digest(content()),
            registered_by="carol",
            description="baseline",
            tags={"algo": "xgb"},
        )
    ]
    version = given(registered(), *when(command, given(registered()))).version(1)
    assert (version.stage, version.registered_by) == (Stage.DEVELOPMENT, "carol")


def test_version_numbers_are_max_plus_one_and_never_reused_after_archiving() -> None:
    state = given(with_versions(3), transitioned(3, Stage.DEVELOPMENT, Stage.ARCHIVED))
    [event] = when(cmd(RegisterVersion, content=content(9)), state)
    assert isinstance(event, VersionRegistered)
    assert event.version == 4


def test_invalid_content_is_rejected_naming_the_field_path() -> None:
    bad = VersionContent(
        artifacts=(
            content()
            .artifacts[0]
            .__class__(path="m", external=True, uri="s3://x", sha256="zz", size=1),
        )
    )
    with pytest.raises(ValidationError) as error:
        when(cmd(RegisterVersion, content=bad), given(registered()))
    assert error.value.field == "content.artifacts[0].sha256"


@pytest.mark.parametrize(
    "command",
    [
        cmd(UpdateVersionDescription, version=7, description="x"),
        cmd(SetVersionTags, version=7, tags={"a": "b"}),
        cmd(RemoveVersionTags, version=7, keys=("a",)),
        cmd(DeprecateVersion, version=7, reason="bad"),
        cmd(TransitionStage, version=7, to_stage=Stage.STAGING),
    ],
)
def test_commands_on_an_unknown_version_say_it_is_not_found(command: object) -> None:
    with pytest.raises(NotFoundError):
        when(command, given(with_versions(1)))


def test_tags_and_descriptions_of_a_version_change_but_its_content_does_not() -> None:
    history = [
        *with_versions(1),
        VersionTagsSet(version=1, tags={"validated": "yes"}),
        VersionDescriptionUpdated(version=1, description="v1"),
    ]
    state = given(history)
    assert state.version(1).tags == {"validated": "yes"}
    assert state.version(1).description == "v1"
    assert state.version(1).content == content(1)
    assert state.version(1).content_digest == content_digest(content(1))


def test_version_metadata_commands_record_only_changes() -> None:
    state = given(with_versions(1), VersionTagsSet(version=1, tags={"a": "1"}))
    assert when(cmd(SetVersionTags, version=1, tags={"a": "1", "b": "2"}), state) == [
        VersionTagsSet(version=1, tags={"b": "2"})
    ]
    assert when(cmd(RemoveVersionTags, version=1, keys=("a", "zz")), state) == [
        VersionTagsRemoved(version=1, keys=("a",))
    ]
    assert when(cmd(UpdateVersionDescription, version=1, description=""), state) == []


def test_deprecating_needs_a_reason_and_is_recorded_once() -> None:
    state = given(with_versions(1))
    with pytest.raises(ValidationError):
        when(cmd(DeprecateVersion, version=1, reason=""), state)
    assert when(cmd(DeprecateVersion, version=1, reason="leaks PII"), state) == [
        VersionDeprecated(version=1, reason="leaks PII")
    ]
    deprecated = given(with_versions(1), VersionDeprecated(version=1, reason="x"))
    assert when(cmd(DeprecateVersion, version=1, reason="again"), deprecated) == []


def test_a_deprecated_version_can_be_neither_promoted_nor_aliased() -> None:
    state = given(with_versions(1), VersionDeprecated(version=1, reason="leaks PII"))
    with pytest.raises(InvalidTransitionError):
        when(cmd(TransitionStage, version=1, to_stage=Stage.STAGING), state)
    with pytest.raises(InvalidTransitionError):
        when(cmd(SetAlias, alias="champion", version=1), state)
