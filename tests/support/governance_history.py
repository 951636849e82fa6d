"""Writing registry histories for the governance views' tests: commands through the real
decider, executor and store, a controllable business clock, sealing, catching views up.

    reg = Registry(db)
    await reg.register("m1", "churn")
    v1 = await reg.version("m1")
    await reg.model("m1", TransitionStage, version=v1, to_stage=Stage.STAGING)
    await reg.catch_up(conn, [PROJECTION])

``random_history`` drives a random walk of plausible commands over a few models (the
decider refuses the implausible ones, which are then skipped), for "rebuild equals live"
and time-travel tests.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from eventlog.log import head_position
from eventlog.sealer import Sealer
from eventlog.store import EventStore
from events.base import Command, Event
from events.catalogue import CODEC
from events.errors import DomainError
from events.metrics import METRICS, LogMetrics, MetricInput
from events.model.commands import (
    ApprovePromotion,
    CancelPromotion,
    ExpirePromotion,
    GovernedCommand,
    RegisterModel,
    RegisterVersion,
    RejectPromotion,
    RemoveAlias,
    ReportDeploymentFailed,
    ReportDeploymentRolledBack,
    ReportDeploymentSucceeded,
    RequestPromotion,
    RestoreVersion,
    Rollback,
    SetAlias,
    SetModelPolicy,
    SetVersionTags,
    StartDeployment,
    TransitionStage,
)
from events.model.decider import MODEL
from events.model.state import DeploymentStatus, ModelState, RequestStatus
from events.policy import GovernancePolicy, TransitionRule
from events.registry_policy import REGISTRY_POLICY, SetRegistryPolicy
from events.stages import Stage
from events.streams import REGISTRY_POLICY_STREAM, metrics_stream, model_stream
from projections.base import Projection
from projections.runner import ensure_projection, step
from service.commands.executor import CommandExecutor
from tests.support.database import Database
from tests.support.policies import PERMISSIVE_POLICY, PERMISSIVE_TRANSITIONS
from tests.unit.domain_helpers import content

T0 = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
APPROVERS = ("bob", "carol", "dave")


class Registry:
    """Commands as the API would run them, at a business time the test controls."""

    def __init__(self, db: Database, start: datetime = T0, step_seconds: float = 60) -> None:
        self.db = db
        self.store = EventStore(db.pool, CODEC)
        self.executor = CommandExecutor(self.store)
        self.now = start
        self.last = start
        self.step = timedelta(seconds=step_seconds)
        self.policy = PERMISSIVE_POLICY
        self._sealer_conn: asyncpg.Connection | None = None
        self._ids = 0

    def tick(self, seconds: float | None = None) -> datetime:
        """Move the clock on; ``last`` keeps the business time of the last command."""
        self.last = self.now
        self.now += self.step if seconds is None else timedelta(seconds=seconds)
        return self.now

    def new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}{self._ids}"

    def command(self, cls: type[Command], actor: str, **fields: Any) -> Command:
        if issubclass(cls, GovernedCommand):
            fields.setdefault("registry_policy", self.policy)
        return cls(actor=actor, now=self.now, **fields)

    async def model(
        self, model_id: str, cls: type[Command], actor: str = "alice", /, **fields: Any
    ) -> list[Event]:
        """Run one model command now; the clock then moves on by one step."""
        outcome = await self.executor.execute(
            model_stream(model_id), MODEL, self.command(cls, actor, **fields)
        )
        self.tick()
        return list(outcome.events)

    async def state(self, model_id: str) -> ModelState:
        _, state = await self.executor.state_of(model_stream(model_id), MODEL)
        return state

    async def register(self, model_id: str, name: str, actor: str = "alice") -> None:
        await self.model(
            model_id, RegisterModel, actor, model_id=model_id, name=name, owner="team-risk"
        )

    async def version(self, model_id: str, actor: str = "alice", seed: int = 1) -> int:
        events = await self.model(model_id, RegisterVersion, actor, content=content(seed))
        number: int = events[0].version  # type: ignore[attr-defined]
        return number

    async def to_production(self, model_id: str, version: int, actor: str = "alice") -> list[Event]:
        """development -> staging -> production by direct transitions (the permissive policy allows them)."""
        state = await self.state(model_id)
        if state.version(version).stage == Stage.DEVELOPMENT:
            await self.model(
                model_id, TransitionStage, actor, version=version, to_stage=Stage.STAGING
            )
        return await self.model(
            model_id, TransitionStage, actor, version=version, to_stage=Stage.PRODUCTION
        )

    async def metrics(
        self, model_id: str, version: int, actor: str = "trainer", **values: float
    ) -> None:
        command = LogMetrics(
            actor=actor,
            now=self.now,
            model_id=model_id,
            version=version,
            metrics=tuple(MetricInput(key=k, value=v) for k, v in values.items()),
        )
        await self.executor.execute(metrics_stream(model_id, version), METRICS, command)
        self.tick()

    async def set_registry_policy(
        self, policy: GovernancePolicy, actor: str = "admin", comment: str = ""
    ) -> None:
        command = SetRegistryPolicy(actor=actor, now=self.now, policy=policy, comment=comment)
        await self.executor.execute(REGISTRY_POLICY_STREAM, REGISTRY_POLICY, command)
        self.policy = policy
        self.tick()

    async def seal(self, timeout: float = 30.0) -> int:
        """Seal everything committed so far; return the head position.

        The sealer takes only transactions older than the cluster's xmin, so an open
        transaction anywhere on the server (another test session) delays it: wait.
        """
        if self._sealer_conn is None:
            self._sealer_conn = await self.db.connect("sealer")
        sealer = Sealer(self.db.connect, self.db.schema)
        written = await self._sealer_conn.fetchval("SELECT count(*) FROM events")
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            await sealer.seal_all(self._sealer_conn)
            head = await head_position(self._sealer_conn)
            if head >= written:
                return head
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"sealed {head} of {written} events in {timeout}s")
            await asyncio.sleep(0.01)

    async def catch_up(self, conn: asyncpg.Connection, projections: Sequence[Projection]) -> int:
        """Seal, then bring every projection's live generation to the head; return the head."""
        head = await self.seal()
        for projection in projections:
            await ensure_projection(conn, projection)
            while await step(conn, projection, batch=500):
                pass
        return head


def gated_policy(approvals: int = 1, separation_of_duties: bool = True) -> GovernancePolicy:
    """The default transitions, but staging -> production needs ``approvals`` approvals."""
    transitions = tuple(
        TransitionRule(
            from_stage=r.from_stage,
            to_stage=r.to_stage,
            approvals=approvals if r.to_stage == Stage.PRODUCTION else 0,
        )
        for r in PERMISSIVE_TRANSITIONS
    )
    return GovernancePolicy(
        transitions=transitions, separation_of_duties=separation_of_duties, request_ttl_seconds=3600
    )


async def random_history(
    reg: Registry, rng: random.Random, steps: int, models: Sequence[str] = ("m1", "m2", "m3")
) -> int:
    """A random walk of plausible commands; returns how many were recorded (refusals skipped)."""
    recorded = 0
    if reg.policy == PERMISSIVE_POLICY:
        # Production behind an approval, so requests stay open and collect votes.
        await reg.set_registry_policy(gated_policy(1))
        recorded += 1
    for model_id in models:
        try:
            await reg.register(model_id, f"model-{model_id}")
            recorded += 1
        except DomainError:
            pass  # registered by an earlier walk
    for _ in range(steps):
        model_id = rng.choice(models)
        try:
            if await _random_command(reg, rng, model_id):
                recorded += 1
        except DomainError:
            reg.tick()
    return recorded


async def _random_command(reg: Registry, rng: random.Random, model_id: str) -> bool:
    state = await reg.state(model_id)
    versions = sorted(state.versions)
    pending = [r for r in state.requests.values() if r.status == RequestStatus.PENDING]
    started = [d for d in state.deployments.values() if d.status == DeploymentStatus.STARTED]
    live = [d for d in state.deployments.values() if d.status == DeploymentStatus.SUCCEEDED]
    actor = rng.choice(("alice", *APPROVERS))
    roll = rng.random()
    if not versions or roll < 0.08:
        await reg.version(model_id, actor, seed=rng.randrange(100))
    elif roll < 0.12:
        await reg.metrics(
            model_id, rng.choice(versions), actor, auc=rng.random(), loss=rng.random()
        )
    elif roll < 0.28:
        version = rng.choice(versions)
        target = rng.choice((Stage.STAGING, Stage.PRODUCTION, Stage.DEVELOPMENT, Stage.ARCHIVED))
        await reg.model(
            model_id,
            TransitionStage,
            actor,
            version=version,
            to_stage=target,
            comment=f"c{rng.randrange(9)}",
        )
    elif roll < 0.35:
        await reg.model(
            model_id,
            SetAlias,
            actor,
            alias=rng.choice(("champion", "challenger")),
            version=rng.choice(versions),
        )
    elif roll < 0.38 and state.aliases:
        await reg.model(model_id, RemoveAlias, actor, alias=rng.choice(sorted(state.aliases)))
    elif roll < 0.50:
        version = rng.choice(versions)
        # Mostly the next stage up, so the request is plausible; sometimes just an alias.
        following = {Stage.DEVELOPMENT: Stage.STAGING, Stage.STAGING: Stage.PRODUCTION}
        next_stage = following.get(state.versions[version].stage) if rng.random() < 0.8 else None
        alias = (
            rng.choice((None, "champion", "shadow"))
            if next_stage
            else rng.choice(("champion", "shadow"))
        )
        await reg.model(
            model_id,
            RequestPromotion,
            actor,
            request_id=reg.new_id("r"),
            version=version,
            target_stage=next_stage,
            alias=alias,
            justification="ready",
        )
    elif roll < 0.66 and pending:
        request = rng.choice(pending)
        which = rng.random()
        if which < 0.6:
            await reg.model(
                model_id, ApprovePromotion, rng.choice(APPROVERS), request_id=request.request_id
            )
        elif which < 0.75:
            await reg.model(
                model_id,
                RejectPromotion,
                rng.choice(APPROVERS),
                request_id=request.request_id,
                comment="not yet",
            )
        elif which < 0.9:
            await reg.model(
                model_id, CancelPromotion, request.requested_by, request_id=request.request_id
            )
        else:
            reg.tick(3600)
            await reg.model(model_id, ExpirePromotion, "system", request_id=request.request_id)
    elif roll < 0.71:
        await reg.model(
            model_id,
            StartDeployment,
            "deployer",
            deployment_id=reg.new_id("d"),
            version=rng.choice(versions),
            environment=rng.choice(("prod", "staging")),
            target="svc",
            **rng.choice(({"desired_stage": Stage.PRODUCTION}, {"desired_alias": "champion"}, {})),
        )
    elif roll < 0.80 and started:
        deployment = rng.choice(started)
        if rng.random() < 0.75:
            await reg.model(
                model_id,
                ReportDeploymentSucceeded,
                "deployer",
                deployment_id=deployment.deployment_id,
            )
        else:
            await reg.model(
                model_id,
                ReportDeploymentFailed,
                "deployer",
                deployment_id=deployment.deployment_id,
                reason="crashloop",
            )
    elif roll < 0.83 and live:
        await reg.model(
            model_id,
            ReportDeploymentRolledBack,
            "deployer",
            deployment_id=rng.choice(live).deployment_id,
            reason="errors",
        )
    elif roll < 0.86:
        await reg.model(model_id, Rollback, actor, reason="bad release")
    elif roll < 0.89:
        await reg.model(
            model_id,
            RestoreVersion,
            "admin",
            version=rng.choice(versions),
            reason="needed",
            actor_is_admin=True,
        )
    elif roll < 0.92:
        await reg.model(
            model_id,
            SetModelPolicy,
            "admin",
            policy=gated_policy(rng.choice((1, 2)), separation_of_duties=rng.random() < 0.7),
        )
    elif roll < 0.94:
        await reg.set_registry_policy(gated_policy(1, separation_of_duties=rng.random() < 0.5))
    else:
        await reg.model(
            model_id,
            SetVersionTags,
            actor,
            version=rng.choice(versions),
            tags={"k": str(rng.randrange(5))},
        )
    return True
