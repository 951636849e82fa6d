"""Builders for given/when/then tests of the pure domain: histories, commands, content."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec

from events.base import Command
from events.metrics import LogMetrics, MetricInput
from events.model.commands import GovernedCommand
from events.model.decider import MODEL, decide
from events.model.events import (
    ModelEvent,
    ModelPolicySet,
    ModelRegistered,
    PromotionRequested,
    StageTransitioned,
    VersionRegistered,
)
from events.model.state import ModelState
from events.policy import GovernancePolicy
from events.stages import Stage, TransitionKind
from events.version_content import (
    ArtifactEntry,
    CodeReference,
    DatasetReference,
    DatasetRole,
    Dependencies,
    FileReference,
    ModelSignature,
    RunReference,
    VersionContent,
    content_digest,
)
from tests.support.policies import PERMISSIVE_POLICY

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MODEL_ID = "0b5e6c1f2d3a4b5c8d9e0f1a2b3c4d5e"
SHA = "ab" * 32

C = TypeVar("C", bound=Command)


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def content(seed: int = 1) -> VersionContent:
    return VersionContent(
        artifacts=(
            ArtifactEntry(
                path="model.pkl",
                external=True,
                uri=f"s3://models/churn/{seed}/model.pkl",
                sha256=SHA,
                size=1024 + seed,
            ),
            ArtifactEntry(
                path="MLmodel",
                external=True,
                uri=f"s3://models/churn/{seed}/MLmodel",
                sha256="cd" * 32,
                size=310,
            ),
        ),
        code=CodeReference(
            repository="https://github.com/acme/churn", commit="1a2b3c4d5e6f", path="train.py"
        ),
        dependencies=Dependencies(
            python_version="3.11.7",
            lock_file=FileReference(uri="s3://models/churn/uv.lock", sha256="ef" * 32),
        ),
        parameters={
            "learning_rate": 0.01,
            "max_depth": 6,
            "objective": "binary",
            "early_stopping": True,
        },
        datasets=(
            DatasetReference(
                name="churn-2024",
                uri="s3://data/churn/2024",
                digest="sha256:" + "12" * 32,
                role=DatasetRole.TRAIN,
            ),
            DatasetReference(
                name="holdout",
                uri="s3://data/churn/holdout",
                digest="sha256:" + "34" * 32,
                role=DatasetRole.TEST,
            ),
        ),
        run=RunReference(
            run_id=f"run-{seed}", url=f"https://mlflow.acme.io/#/runs/run-{seed}", tracker="mlflow"
        ),
        signature=ModelSignature(
            inputs='[{"name": "tenure", "type": "long"}]', outputs='[{"type": "double"}]'
        ),
    )


def cmd(cls: type[C], actor: str = "alice", now: datetime = NOW, **fields: Any) -> C:
    """A command with ``actor`` and ``now`` filled in, decided under ``PERMISSIVE_POLICY``
    unless the test names the registry policy (governance tests do)."""
    if issubclass(cls, GovernedCommand):
        fields.setdefault("registry_policy", PERMISSIVE_POLICY)
    return cls(actor=actor, now=now, **fields)


# --- events, as they appear in histories ------------------------------------------------


def registered(name: str = "churn", owner: str = "team-risk") -> ModelRegistered:
    return ModelRegistered(model_id=MODEL_ID, name=name, description="", tags={}, owner=owner)


def version_registered(
    number: int, by: str = "alice", seed: int | None = None, stage: str | None = None
) -> VersionRegistered:
    body = content(number if seed is None else seed)
    return VersionRegistered(
        version=number,
        content=body,
        content_digest=content_digest(body),
        registered_by=by,
        description="",
        tags={},
        stage=msgspec.UNSET if stage is None else stage,
    )


def transitioned(
    version: int,
    from_stage: str,
    to_stage: str,
    kind: TransitionKind = TransitionKind.DIRECT,
    comment: str = "",
    request_id: str | None = None,
) -> StageTransitioned:
    return StageTransitioned(
        version=version,
        from_stage=from_stage,
        to_stage=to_stage,
        kind=kind,
        comment=comment,
        request_id=request_id,
    )


def policy_set(policy: GovernancePolicy) -> ModelPolicySet:
    return ModelPolicySet(policy=policy, comment="")


def requested(
    request_id: str,
    version: int,
    target_stage: str | None = None,
    alias: str | None = None,
    by: str = "alice",
    approvals: int = 1,
    ttl: float = 7 * 24 * 3600,
    rollback: bool = False,
    justification: str = "ready",
) -> PromotionRequested:
    return PromotionRequested(
        request_id=request_id,
        version=version,
        target_stage=target_stage,
        alias=alias,
        justification=justification,
        requested_by=by,
        expires_at=later(ttl),
        approvals_required=approvals,
        rollback=rollback,
    )


def in_production(version: int) -> list[ModelEvent]:
    """The history that brings an existing development version into production."""
    return [
        transitioned(version, Stage.DEVELOPMENT, Stage.STAGING),
        transitioned(version, Stage.STAGING, Stage.PRODUCTION),
    ]


def with_versions(count: int, by: str = "alice") -> list[ModelEvent]:
    return [registered(), *(version_registered(n, by=by) for n in range(1, count + 1))]


# --- given / when -----------------------------------------------------------------------


def given(*history: ModelEvent | Iterable[ModelEvent]) -> ModelState:
    flat: list[ModelEvent] = []
    for item in history:
        if isinstance(item, list | tuple):
            flat.extend(item)
        else:
            flat.append(item)  # type: ignore[arg-type]
    return MODEL.fold(flat)


def when(command: Any, state: ModelState) -> list[ModelEvent]:
    return decide(command, state)


def metrics_batch(model_id: str = MODEL_ID, version: int = 1, **values: float) -> LogMetrics:
    return cmd(
        LogMetrics,
        model_id=model_id,
        version=version,
        metrics=tuple(MetricInput(key=k, value=v) for k, v in values.items()),
    )
