"""MLflow's request and response messages (``model_registry.proto``) as msgspec structs,
and the conversion of modelreg's rows into them. I/O: none.

Responses follow MLflow's JSON: snake_case fields, int64 timestamps in milliseconds as
numbers, version numbers as strings, stage names capitalised, empty fields omitted.
Requests ignore fields this server does not use (``deployment_job_id``, ``model_id``),
as MLflow's own server does for fields it does not know.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from events.errors import ValidationError
from events.mlflow_stages import stage_to_mlflow
from events.model.state import ModelState
from projections.mlflow_views import MlflowVersion, millis
from projections.views.model_catalogue import ModelRow

MAX_VERSION = 2**31 - 1


class Tag(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    value: str = ""


class Alias(msgspec.Struct, frozen=True, kw_only=True):
    alias: str
    version: str


class ModelVersion(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    name: str
    version: str
    creation_timestamp: int
    last_updated_timestamp: int
    # Always sent: a missing status reads as proto's default, PENDING_REGISTRATION, and
    # MLflow's client then waits for the version to become READY.
    status: str
    user_id: str = ""
    current_stage: str = ""
    description: str = ""
    source: str = ""
    run_id: str = ""
    run_link: str = ""
    tags: list[Tag] = msgspec.field(default_factory=list)
    aliases: list[str] = msgspec.field(default_factory=list)


class RegisteredModel(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    name: str
    creation_timestamp: int
    last_updated_timestamp: int
    user_id: str = ""
    description: str = ""
    latest_versions: list[ModelVersion] = msgspec.field(default_factory=list)
    tags: list[Tag] = msgspec.field(default_factory=list)
    aliases: list[Alias] = msgspec.field(default_factory=list)


class RegisteredModelAnswer(msgspec.Struct, frozen=True, kw_only=True):
    registered_model: RegisteredModel


class ModelVersionAnswer(msgspec.Struct, frozen=True, kw_only=True):
    model_version: ModelVersion


class ModelVersionsAnswer(msgspec.Struct, frozen=True, kw_only=True):
    model_versions: list[ModelVersion]


class SearchModelsAnswer(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    registered_models: list[RegisteredModel] = msgspec.field(default_factory=list)
    next_page_token: str | None = None


class SearchVersionsAnswer(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    # Each a ModelVersion as the view keeps it rendered (projections.mlflow_views).
    model_versions: list[msgspec.Raw] = msgspec.field(default_factory=list)
    next_page_token: str | None = None


class DownloadUri(msgspec.Struct, frozen=True, kw_only=True):
    artifact_uri: str


class Empty(msgspec.Struct, frozen=True):
    """MLflow's empty answer, ``{}``."""


# --- requests ----------------------------------------------------------------------------

VersionText = str | int  # MLflow sends "3"; a hand-written call may send 3


class CreateRegisteredModel(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    tags: list[Tag] = msgspec.field(default_factory=list)
    description: str = ""


class ModelName(msgspec.Struct, frozen=True, kw_only=True):
    name: str


class RenameRegisteredModel(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    new_name: str


class UpdateRegisteredModel(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    # MLflow's server writes the description it is given, and "" when none is: so here.
    description: str = ""


class SetRegisteredModelTag(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    key: str
    value: str = ""


class DeleteRegisteredModelTag(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    key: str


class SetAlias(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    alias: str
    version: VersionText


class DeleteAlias(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    alias: str


class LatestVersionsRequest(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    stages: list[str] = msgspec.field(default_factory=list)


class CreateModelVersion(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    source: str
    run_id: str = ""
    tags: list[Tag] = msgspec.field(default_factory=list)
    run_link: str = ""
    description: str = ""


class VersionRef(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: VersionText


class UpdateModelVersion(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: VersionText
    description: str = ""


class TransitionStage(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: VersionText
    stage: str
    archive_existing_versions: bool = False


class SetVersionTag(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: VersionText
    key: str
    value: str = ""


class DeleteVersionTag(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: VersionText
    key: str


# --- conversions ---------------------------------------------------------------------------


def version_number(value: VersionText, field: str = "version") -> int:
    """MLflow's version string as a number; anything else is INVALID_PARAMETER_VALUE."""
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or int(text) > MAX_VERSION:
        raise ValidationError(
            field, "pattern", f"version must be a positive integer, got {str(value)[:40]!r}"
        )
    return int(text)


def tags_of(tags: list[Tag]) -> dict[str, str]:
    return {t.key: t.value for t in tags}


def _tag_list(tags: dict[str, str]) -> list[Tag]:
    return [Tag(key=k, value=v) for k, v in sorted(tags.items())]


def model_version(row: MlflowVersion) -> ModelVersion:
    return ModelVersion(
        name=row.name,
        version=str(row.version),
        creation_timestamp=row.created_us // 1000,
        last_updated_timestamp=row.updated_us // 1000,
        status="READY",
        user_id=row.registered_by,
        current_stage=stage_to_mlflow(row.stage),
        description=row.description,
        source=row.source,
        run_id=row.run_id,
        run_link=row.run_link,
        tags=_tag_list(row.tags),
        aliases=list(row.aliases),
    )


def just_registered(state: ModelState, at: datetime) -> RegisteredModel:
    """A model as its registration recorded it, at ``at``: what the views will show once
    they have it (no versions, no aliases yet)."""
    return RegisteredModel(
        name=state.name,
        creation_timestamp=millis(at),
        last_updated_timestamp=millis(at),
        user_id=state.owner,
        description=state.description,
        tags=_tag_list(state.tags),
    )


def registered_model(row: ModelRow, latest: list[MlflowVersion]) -> RegisteredModel:
    return RegisteredModel(
        name=row.name,
        creation_timestamp=millis(row.created_at),
        last_updated_timestamp=millis(row.updated_at),
        user_id=row.owner,
        description=row.description,
        latest_versions=[model_version(v) for v in latest],
        tags=_tag_list(row.tags),
        aliases=[Alias(alias=a, version=str(v)) for a, v in sorted(row.aliases.items())],
    )
