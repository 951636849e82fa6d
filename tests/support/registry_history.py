"""Write realistic registry histories through the real deciders, executor and store: the
one history builder of the view, search, time-travel and CLI tests.

    reg = await registry(db)                      # or Registry(db): connects when it first seals
    churn = await reg.register_model("churn", owner="team-risk", tags={"team": "risk"})
    v1 = await reg.register_version(churn, params={"lr": 0.1}, datasets=["holdout"])
    await reg.log_metrics(churn, v1, {"auc": 0.91}, dataset="holdout")
    await reg.transition(churn, v1, "staging")
    await reg.execute(churn, SetAlias, alias="champion", version=v1)   # any model command
    await reg.project(CATALOGUE, VERSIONS)       # seals, then folds every projection to the head

Every write is a domain command decided by ``events.model.decider.MODEL`` / ``events.metrics.METRICS``
(or the registry policy's decider) and appended by ``service.commands.executor.CommandExecutor``,
so histories are ones the service could have written (a refused command raises the
``DomainError``). The business clock is deterministic: ``now`` is the time the next command
carries and ``last`` the time of the last one; each command moves it on by one step (60 s
for ``Registry(db)``, 1 s for ``registry(db)``; ``tick`` to jump). Ids are sequential
(``m0001``, ``r0001``, ``d0001``) unless given. ``state(model_id)`` and
``metrics_state(model_id, version)`` return the domain's own fold after the last write:
the oracle for checking views.

``random_history(reg, rng, n)`` attempts ``n`` random commands (registrations, versions,
metrics, stage moves, aliases, tags, renames, archives, promotions with approvals, expiries,
rollbacks, restores, deployments and their outcomes, model and registry policies), chosen
to be mostly valid; refused ones are skipped.

Contract checks any view can reuse (pass its projection and its ``checksum``):
``check_rebuild_equals_live`` (optionally with traffic while the rebuild runs),
``record_live_positions`` (step in small batches, record checksums per position) and
``as_of`` (run a query on a fold of the log up to a position: temporary or scratch tables).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from eventlog.log import head_position
from eventlog.sealer import Sealer
from eventlog.store import EventStore
from events.base import Command
from events.catalogue import CODEC
from events.errors import DomainError
from events.metrics import METRICS, LogMetrics, MetricInput, MetricsState
from events.model.commands import (
    ApprovePromotion,
    ArchiveModel,
    ArchiveVersion,
    CancelPromotion,
    DeleteModel,
    DeprecateVersion,
    ExpirePromotion,
    GovernedCommand,
    RegisterModel,
    RegisterVersion,
    RejectPromotion,
    RemoveAlias,
    RemoveModelTags,
    RemoveVersionTags,
    RenameModel,
    ReportDeploymentFailed,
    ReportDeploymentRolledBack,
    ReportDeploymentSucceeded,
    RequestPromotion,
    RestoreModel,
    RestoreVersion,
    Rollback,
    SetAlias,
    SetModelPolicy,
    SetModelTags,
    SetVersionTags,
    StartDeployment,
    TransitionStage,
    UpdateModelDescription,
    UpdateVersionDescription,
)
from events.model.decider import MODEL
from events.model.events import ModelRegistered, ModelRenamed
from events.model.state import DeploymentStatus, ModelState, RequestStatus
from events.policy import GovernancePolicy, TransitionRule
from events.registry_policy import REGISTRY_POLICY, SetRegistryPolicy
from events.stages import DEFAULT_STAGES, Stage
from events.streams import REGISTRY_POLICY_STREAM, metrics_stream, model_stream, name_key
from events.version_content import (
    ArtifactEntry,
    DatasetReference,
    DatasetRole,
    RunReference,
    VersionContent,
)
from projections.base import Names, Projection
from projections.rounds import Generation
from projections.runner import (
    advance,
    ensure_projection,
    generations,
    start_rebuild,
    step,
    switch_if_caught_up,
)
from projections.time_travel import fold_as_of, folded_views
from service.commands.executor import CommandExecutor, Outcome
from tests.support.database import Database
from tests.support.policies import PERMISSIVE_POLICY, PERMISSIVE_TRANSITIONS
from tests.support.waiting import eventually

T0 = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)  # Registry(db): one command a minute from here
START = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)  # registry(db): one command a second from here
APPROVERS = ("bob", "carol", "dave")


def name_keys(events: Sequence[Any], state: Any) -> tuple[list[str], list[str]]:
    """The unique-name keys a model append claims and releases (as the service does)."""
    claim, release = [], []
    for event in events:
        if isinstance(event, ModelRegistered):
            claim.append(name_key(event.name))
        elif isinstance(event, ModelRenamed):
            claim.append(name_key(event.new_name))
            release.append(name_key(event.old_name))
    return claim, release


def version_content(
    name: str, number: int, params: Mapping[str, Any], datasets: Sequence[str]
) -> VersionContent:
    """A valid content: one artifact, ``params``, the first dataset for training, the rest for testing."""
    return VersionContent(
        artifacts=(
            ArtifactEntry(
                path="model.pkl",
                external=True,
                uri=f"s3://models/{name}/{number}/model.pkl",
                sha256=f"{number:064x}",
                size=1000 + number,
            ),
        ),
        parameters=dict(params),
        datasets=tuple(
            DatasetReference(
                name=d,
                uri=f"s3://data/{d}",
                digest=f"sha256:{i:064x}",
                role=DatasetRole.TRAIN if i == 0 else DatasetRole.TEST,
            )
            for i, d in enumerate(datasets)
        ),
        run=RunReference(run_id=f"run-{name}-{number}", tracker="mlflow"),
    )


class Registry:
    """Commands as the API would run them, at a business time the test controls."""

    def __init__(
        self,
        db: Database,
        conn: asyncpg.Connection | None = None,
        *,
        start: datetime = T0,
        step_seconds: float = 60,
    ) -> None:
        self.db = db
        self._conn = conn
        self.store = EventStore(db.pool, CODEC)
        self.executor = CommandExecutor(self.store)
        self.sealer = Sealer(db.connect, db.schema)
        self.now = start  # the business time of the next command
        self.last = start  # ... and of the last one
        self.step = timedelta(seconds=step_seconds)
        self.actor = "alice"
        self.registry_policy = PERMISSIVE_POLICY
        self.states: dict[str, ModelState] = {}
        self.metric_states: dict[tuple[str, int], MetricsState] = {}
        self._ids = 0

    # --- plumbing -----------------------------------------------------------------------

    @property
    def conn(self) -> asyncpg.Connection:
        """The registry's own connection (sealing, projecting, folding)."""
        assert self._conn is not None, "build it with `await registry(db)` or seal first"
        return self._conn

    async def connect(self) -> asyncpg.Connection:
        if self._conn is None:
            self._conn = await self.db.connect("registry-history")
        return self._conn

    def next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}{self._ids:04d}"

    def tick(self, seconds: float | None = None) -> datetime:
        """Move the clock on by a step (or ``seconds``); return the time of the next command."""
        self.last = self.now
        self.now += self.step if seconds is None else timedelta(seconds=seconds)
        return self.now

    def moment(self) -> datetime:
        """A business time of its own for an event a test appends by hand."""
        at = self.now
        self.tick()
        return at

    def _fields(
        self, cls: type[Command], actor: str | None, fields: dict[str, Any]
    ) -> dict[str, Any]:
        """The command's fields at ``now``; the clock moves on, whether the domain accepts it or not."""
        if issubclass(cls, GovernedCommand):
            fields.setdefault("registry_policy", self.registry_policy)
        return {"actor": actor or self.actor, "now": self.moment(), **fields}

    async def execute(
        self, model_id: str, cls: type[Command], actor: str | None = None, /, **fields: Any
    ) -> Outcome[Any, Any]:
        """Decide and append one command on model ``model_id``'s stream (claiming and
        releasing unique names as the service does); remember the state it left."""
        command = cls(**self._fields(cls, actor, fields))
        outcome = await self.executor.execute(
            model_stream(model_id), MODEL, command, keys=name_keys
        )
        self.states[model_id] = outcome.state
        return outcome

    def state(self, model_id: str) -> ModelState:
        return self.states[model_id]

    def metrics_state(self, model_id: str, version: int) -> MetricsState:
        return self.metric_states.get((model_id, version), METRICS.initial_state())

    async def seal(self) -> int:
        """Seal everything committed so far; return the head of the log.

        The sealer only takes transactions older than every open one in the cluster, so
        on a shared Postgres a stranger's open transaction delays it: wait until the log
        holds every committed event.
        """
        conn = await self.connect()
        head = 0

        async def all_sealed() -> bool:
            nonlocal head
            await self.sealer.seal_all(conn)
            head = await head_position(conn)
            written: int = await conn.fetchval("SELECT count(*) FROM events")
            return head >= written

        await eventually(all_sealed, what="every committed event sealed (a long open transaction?)")
        return head

    async def project(self, *projections: Projection, batch: int = 1000) -> int:
        """Seal, then run ``ensure_projection`` and ``step`` until each projection is at the head."""
        head = await self.seal()
        for projection in projections:
            await ensure_projection(self.conn, projection)
            while await step(self.conn, projection, batch=batch):
                pass
        return head

    # --- models -------------------------------------------------------------------------

    async def register_model(
        self,
        name: str,
        owner: str = "team-ml",
        tags: Mapping[str, str] | None = None,
        description: str = "",
        model_id: str | None = None,
        actor: str | None = None,
    ) -> str:
        model_id = model_id or self.next_id("m")
        await self.execute(
            model_id,
            RegisterModel,
            actor,
            model_id=model_id,
            name=name,
            owner=owner,
            tags=dict(tags or {}),
            description=description,
        )
        return model_id

    async def describe(self, model_id: str, description: str) -> None:
        await self.execute(model_id, UpdateModelDescription, description=description)

    async def set_tags(self, model_id: str, tags: Mapping[str, str]) -> None:
        await self.execute(model_id, SetModelTags, tags=dict(tags))

    async def remove_tags(self, model_id: str, *keys: str) -> None:
        await self.execute(model_id, RemoveModelTags, keys=keys)

    async def rename(self, model_id: str, new_name: str) -> None:
        await self.execute(model_id, RenameModel, new_name=new_name)

    async def archive_model(self, model_id: str, reason: str = "retired") -> None:
        await self.execute(model_id, ArchiveModel, reason=reason)

    async def delete_model(self, model_id: str, reason: str = "created by mistake") -> None:
        await self.execute(model_id, DeleteModel, reason=reason)

    async def restore_model(self, model_id: str, reason: str = "back") -> None:
        await self.execute(model_id, RestoreModel, reason=reason)

    async def set_policy(self, model_id: str, policy: GovernancePolicy) -> None:
        await self.execute(model_id, SetModelPolicy, policy=policy)

    async def set_registry_policy(
        self, policy: GovernancePolicy, actor: str = "admin", comment: str = ""
    ) -> None:
        command = SetRegistryPolicy(
            **self._fields(SetRegistryPolicy, actor, {"policy": policy, "comment": comment})
        )
        await self.executor.execute(REGISTRY_POLICY_STREAM, REGISTRY_POLICY, command)
        self.registry_policy = policy

    # --- versions -----------------------------------------------------------------------

    async def register_version(
        self,
        model_id: str,
        params: Mapping[str, Any] | None = None,
        datasets: Sequence[str] = ("train",),
        tags: Mapping[str, str] | None = None,
        description: str = "",
        actor: str | None = None,
    ) -> int:
        state = self.states.get(model_id)
        number = (state.last_version if state else 0) + 1
        name = state.name if state else model_id
        content = version_content(name, number, params or {}, datasets)
        outcome = await self.execute(
            model_id,
            RegisterVersion,
            actor,
            content=content,
            tags=dict(tags or {}),
            description=description,
        )
        registered: int = outcome.state.last_version
        return registered

    async def describe_version(self, model_id: str, version: int, description: str) -> None:
        await self.execute(
            model_id, UpdateVersionDescription, version=version, description=description
        )

    async def set_version_tags(self, model_id: str, version: int, tags: Mapping[str, str]) -> None:
        await self.execute(model_id, SetVersionTags, version=version, tags=dict(tags))

    async def remove_version_tags(self, model_id: str, version: int, *keys: str) -> None:
        await self.execute(model_id, RemoveVersionTags, version=version, keys=keys)

    async def deprecate(self, model_id: str, version: int, reason: str = "superseded") -> None:
        await self.execute(model_id, DeprecateVersion, version=version, reason=reason)

    async def log_metrics(
        self,
        model_id: str,
        version: int,
        values: Mapping[str, float],
        dataset: str | None = None,
        step: int = 0,
        actor: str | None = None,
    ) -> None:
        await self.log_points(
            model_id,
            version,
            [MetricInput(key=k, value=v, step=step, dataset=dataset) for k, v in values.items()],
            actor,
        )

    async def log_points(
        self,
        model_id: str,
        version: int,
        points: Sequence[MetricInput],
        actor: str | None = None,
    ) -> None:
        command = LogMetrics(
            **self._fields(
                LogMetrics,
                actor,
                {"model_id": model_id, "version": version, "metrics": tuple(points)},
            )
        )
        outcome = await self.executor.execute(metrics_stream(model_id, version), METRICS, command)
        self.metric_states[(model_id, version)] = outcome.state

    # --- stages, aliases, promotions ------------------------------------------------------

    async def _gate_metrics(
        self, model_id: str, *versions: int | None
    ) -> dict[int, dict[str, dict[str, float]]]:
        """The metric snapshot governed commands carry (latest values), for the versions named."""
        snapshot: dict[int, dict[str, dict[str, float]]] = {}
        for number in versions:
            if number is not None:
                latest = self.metrics_state(model_id, number).latest
                snapshot[number] = {
                    k: {d: m.value for d, m in by.items()} for k, by in latest.items()
                }
        return snapshot

    async def transition(
        self,
        model_id: str,
        version: int,
        to: Stage | str,
        comment: str = "",
        actor: str | None = None,
        environment: str | None = None,
    ) -> None:
        champion = self.states[model_id].champion(environment)
        metrics = await self._gate_metrics(model_id, version, champion)
        await self.execute(
            model_id,
            TransitionStage,
            actor,
            version=version,
            to_stage=Stage(to),
            comment=comment,
            metrics=metrics,
            environment=environment,
        )

    async def to_production(self, model_id: str, version: int, actor: str | None = None) -> None:
        """development -> staging -> production by direct transitions (the default policy allows them)."""
        if self.states[model_id].version(version).stage == Stage.DEVELOPMENT:
            await self.transition(model_id, version, Stage.STAGING, actor=actor)
        await self.transition(model_id, version, Stage.PRODUCTION, actor=actor)

    async def archive_version(self, model_id: str, version: int, reason: str = "old") -> None:
        await self.execute(model_id, ArchiveVersion, version=version, reason=reason)

    async def set_alias(self, model_id: str, alias: str, version: int) -> None:
        await self.execute(model_id, SetAlias, alias=alias, version=version)

    async def remove_alias(self, model_id: str, alias: str) -> None:
        await self.execute(model_id, RemoveAlias, alias=alias)

    async def rollback(self, model_id: str, reason: str = "bad release") -> None:
        await self.execute(model_id, Rollback, reason=reason)

    async def request_promotion(
        self,
        model_id: str,
        version: int,
        stage: Stage | str | None = None,
        alias: str | None = None,
        actor: str | None = None,
        justification: str = "ready",
        rollback: bool = False,
        environment: str | None = None,
    ) -> str:
        request_id = self.next_id("r")
        champion = self.states[model_id].champion(environment)
        metrics = await self._gate_metrics(model_id, version, champion)
        await self.execute(
            model_id,
            RequestPromotion,
            actor,
            request_id=request_id,
            version=version,
            target_stage=None if stage is None else Stage(stage),
            alias=alias,
            justification=justification,
            rollback=rollback,
            metrics=metrics,
            environment=environment,
        )
        return request_id

    async def approve(
        self, model_id: str, request_id: str, actor: str = "bob", comment: str = ""
    ) -> None:
        version = self.states[model_id].requests[request_id].version
        metrics = await self._gate_metrics(model_id, version, self.states[model_id].production)
        await self.execute(
            model_id,
            ApprovePromotion,
            actor,
            request_id=request_id,
            comment=comment,
            metrics=metrics,
        )

    async def reject(
        self, model_id: str, request_id: str, actor: str = "bob", comment: str = "not yet"
    ) -> None:
        await self.execute(model_id, RejectPromotion, actor, request_id=request_id, comment=comment)

    async def cancel(self, model_id: str, request_id: str, actor: str | None = None) -> None:
        await self.execute(model_id, CancelPromotion, actor, request_id=request_id)

    # --- deployments --------------------------------------------------------------------

    async def start_deployment(
        self,
        model_id: str,
        version: int,
        environment: str = "prod",
        target: str = "api",
        desired_stage: Stage | None = None,
        desired_alias: str | None = None,
    ) -> str:
        deployment_id = self.next_id("d")
        await self.execute(
            model_id,
            StartDeployment,
            "deployer",
            deployment_id=deployment_id,
            version=version,
            environment=environment,
            target=target,
            desired_stage=desired_stage,
            desired_alias=desired_alias,
        )
        return deployment_id

    async def deployment_succeeded(self, model_id: str, deployment_id: str) -> None:
        await self.execute(
            model_id, ReportDeploymentSucceeded, "deployer", deployment_id=deployment_id
        )

    async def deployment_failed(
        self, model_id: str, deployment_id: str, reason: str = "crash loop"
    ) -> None:
        await self.execute(
            model_id, ReportDeploymentFailed, "deployer", deployment_id=deployment_id, reason=reason
        )

    async def deployment_rolled_back(
        self, model_id: str, deployment_id: str, reason: str = "errors"
    ) -> None:
        await self.execute(
            model_id,
            ReportDeploymentRolledBack,
            "deployer",
            deployment_id=deployment_id,
            reason=reason,
        )


async def registry(db: Database) -> Registry:
    """A registry on its own connection, with a clock that moves a second per command."""
    return Registry(db, await db.connect("registry-history"), start=START, step_seconds=1)


def gated_policy(
    approvals: int = 1,
    separation_of_duties: bool = True,
    request_ttl_seconds: int = 3600,
) -> GovernancePolicy:
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
        transitions=transitions,
        separation_of_duties=separation_of_duties,
        request_ttl_seconds=request_ttl_seconds,
    )


# --- random histories ---------------------------------------------------------------------

NAME_STEMS = (
    "fraud",
    "churn",
    "Fraud-Detect",
    "ranker",
    "vision",
    "nlp_intent",
    "fraudster",
    "price.opt",
)
NAME_SUFFIXES = ("", "-eu", "-us", "_v2", ".beta")
OWNERS = ("team-risk", "team-growth", "team-ml")
TAG_VALUES = {"team": ("risk", "growth", "ml"), "tier": ("gold", "silver"), "pii": ("yes", "no")}
ALIASES = ("champion", "challenger", "canary", "shadow")
METRIC_KEYS = ("auc", "loss", "f1")
DATASETS = (None, "holdout", "train")
ACTORS = ("alice", "bob", "carol")
# A policy under which production needs one approval (so requests stay pending).
GUARDED = gated_policy(1, request_ttl_seconds=PERMISSIVE_POLICY.request_ttl_seconds)
# Production per environment (the deployments' environments among them, so drift is
# judged per environment); approval-free, so promotion requests execute at once.
ENVIRONMENTS = ("eu", "us", "prod")
REGIONAL = msgspec.structs.replace(
    gated_policy(0, request_ttl_seconds=PERMISSIVE_POLICY.request_ttl_seconds),
    stages=tuple(
        msgspec.structs.replace(d, environments=ENVIRONMENTS) if d.name == Stage.PRODUCTION else d
        for d in DEFAULT_STAGES
    ),
)


def _tags(rng: random.Random) -> dict[str, str]:
    return {k: rng.choice(v) for k, v in TAG_VALUES.items() if rng.random() < 0.5}


Action = Callable[[Registry, random.Random, str, int], Awaitable[None]]


def _versions(state: ModelState, *, live: bool = False) -> list[int]:
    """Version numbers; with ``live``, only those an alias or a promotion may target."""
    return [
        n
        for n, v in sorted(state.versions.items())
        if not live or (v.stage != Stage.ARCHIVED and not v.deprecated)
    ]


async def _new_version(reg: Registry, rng: random.Random, model_id: str, counter: int) -> None:
    params = {
        "lr": rng.choice((0.1, 0.01, 0.001)),
        "depth": rng.randrange(2, 9),
        "objective": rng.choice(("binary", "xent")),
        "early": rng.random() < 0.5,
    }
    await reg.register_version(
        model_id,
        params=params,
        datasets=rng.choice((["train"], ["train", "holdout"])),
        tags=_tags(rng),
    )


async def _metrics(reg: Registry, rng: random.Random, model_id: str, counter: int) -> None:
    number = rng.choice(_versions(reg.states[model_id]))
    # Two decimals and few steps, so equal values and equal steps (the tie rules) happen.
    values = {k: round(rng.random(), 2) for k in METRIC_KEYS if rng.random() < 0.6} or {"auc": 0.5}
    await reg.log_metrics(
        model_id, number, values, dataset=rng.choice(DATASETS), step=rng.randrange(4)
    )


async def _stage(reg: Registry, rng: random.Random, model_id: str, counter: int) -> None:
    state = reg.states[model_id]
    staging = [n for n, v in state.versions.items() if v.stage == Stage.STAGING]
    environments = state.effective_policy(reg.registry_policy).environments(Stage.PRODUCTION)
    # With production per environment, often a production version into one more environment.
    production = list(state.in_stage(Stage.PRODUCTION)) if environments else []
    if production and rng.random() < 0.4:
        number = rng.choice(production)
    else:
        number = rng.choice(staging if staging and rng.random() < 0.5 else _versions(state))
    version = state.versions[number]
    moves: dict[str, list[str]] = {
        Stage.DEVELOPMENT: [Stage.STAGING],
        Stage.STAGING: [Stage.DEVELOPMENT, Stage.PRODUCTION],
    }
    if environments and version.stage == Stage.PRODUCTION and not version.deprecated:
        moves[Stage.PRODUCTION] = [Stage.PRODUCTION]  # into one more environment
    environment = rng.choice(environments) if environments else None
    if version.stage != Stage.ARCHIVED and rng.random() < 0.15:
        await reg.archive_version(model_id, number)
    elif version.stage in moves and not version.deprecated:
        target = rng.choice(moves[version.stage])
        at = environment if target == Stage.PRODUCTION else None
        if target == Stage.PRODUCTION and state.policy is not None:  # GUARDED: needs an approval
            request_id = await reg.request_promotion(model_id, number, stage=target, environment=at)
            if rng.random() < 0.7:
                await reg.approve(model_id, request_id, actor=rng.choice(("bob", "carol")))
        else:
            await reg.transition(model_id, number, target, environment=at)


async def _alias(reg: Registry, rng: random.Random, model_id: str, counter: int) -> None:
    state = reg.states[model_id]
    live = _versions(state, live=True)
    if live and (rng.random() < 0.7 or not state.aliases):
        await reg.set_alias(model_id, rng.choice(ALIASES), rng.choice(live))
    elif state.aliases:
        await reg.remove_alias(model_id, rng.choice(sorted(state.aliases)))


async def _version_metadata(reg: Registry, rng: random.Random, model_id: str, counter: int) -> None:
    number = rng.choice(_versions(reg.states[model_id]))
    roll = rng.random()
    if roll < 0.5:
        await reg.set_version_tags(model_id, number, _tags(rng) or {"tier": "gold"})
    elif roll < 0.75:
        await reg.remove_version_tags(model_id, number, rng.choice(tuple(TAG_VALUES)))
    else:
        await reg.describe_version(model_id, number, f"notes {counter}")


async def _model_metadata(reg: Registry, rng: random.Random, model_id: str, counter: int) -> None:
    roll = rng.random()
    if roll < 0.6:
        await reg.set_tags(model_id, _tags(rng) or {"pii": "no"})
    elif roll < 0.8:
        await reg.remove_tags(model_id, rng.choice(tuple(TAG_VALUES)))
    else:
        await reg.describe(model_id, f"about {counter}")


async def _promotion(reg: Registry, rng: random.Random, model_id: str, counter: int) -> None:
    state = reg.states[model_id]
    pending = [r for r in state.requests.values() if r.status == RequestStatus.PENDING]
    live = _versions(state, live=True)
    if pending:
        request = rng.choice(pending)
        roll = rng.random()
        if roll < 0.6:
            await reg.approve(model_id, request.request_id, actor=rng.choice(("bob", "carol")))
        elif roll < 0.8:
            await reg.reject(model_id, request.request_id)
        else:
            await reg.cancel(model_id, request.request_id, actor=request.requested_by)
    elif live:
        await reg.request_promotion(model_id, rng.choice(live), alias=rng.choice(ALIASES))


async def _rollback_or_policy(
    reg: Registry, rng: random.Random, model_id: str, counter: int
) -> None:
    if reg.states[model_id].rollback_target() is not None:
        await reg.rollback(model_id)
    elif reg.states[model_id].policy is None:
        await reg.set_policy(model_id, rng.choice((GUARDED, REGIONAL)))


async def _deployment(reg: Registry, rng: random.Random, model_id: str, counter: int) -> None:
    state = reg.states[model_id]
    running = [d for d in state.deployments.values() if d.status == DeploymentStatus.STARTED]
    live = [d for d in state.deployments.values() if d.status == DeploymentStatus.SUCCEEDED]
    roll = rng.random()
    if running and roll < 0.5:
        deployment = rng.choice(running)
        if rng.random() < 0.8:
            await reg.deployment_succeeded(model_id, deployment.deployment_id)
        else:
            await reg.deployment_failed(model_id, deployment.deployment_id)
    elif live and roll < 0.6:
        await reg.deployment_rolled_back(model_id, rng.choice(live).deployment_id)
    else:
        # What the deployment follows, if anything: a stage, an alias (drift is judged on it).
        follows = rng.choice(
            ({"desired_stage": Stage.PRODUCTION}, {"desired_alias": "champion"}, {})
        )
        await reg.start_deployment(
            model_id,
            rng.choice(_versions(state)),
            environment=rng.choice(("prod", "staging", "eu")),
            **follows,
        )


async def _expiry(reg: Registry, rng: random.Random, model_id: str, counter: int) -> None:
    pending = [
        r for r in reg.states[model_id].requests.values() if r.status == RequestStatus.PENDING
    ]
    if pending:
        request = rng.choice(pending)
        if reg.now < request.expires_at:
            reg.tick((request.expires_at - reg.now).total_seconds())
        await reg.execute(model_id, ExpirePromotion, "system", request_id=request.request_id)


async def _restore_version(reg: Registry, rng: random.Random, model_id: str, counter: int) -> None:
    state = reg.states[model_id]
    archived = [n for n, v in sorted(state.versions.items()) if v.stage == Stage.ARCHIVED]
    if archived:
        await reg.execute(
            model_id,
            RestoreVersion,
            "admin",
            version=rng.choice(archived),
            reason="needed",
            actor_is_admin=True,
        )


async def _registry_policy(reg: Registry, rng: random.Random, model_id: str, counter: int) -> None:
    await reg.set_registry_policy(
        gated_policy(rng.choice((1, 2)), separation_of_duties=rng.random() < 0.7)
    )


async def _deprecate(reg: Registry, rng: random.Random, model_id: str, counter: int) -> None:
    live = _versions(reg.states[model_id], live=True)
    if live:
        await reg.deprecate(model_id, rng.choice(live))


async def _rename(reg: Registry, rng: random.Random, model_id: str, counter: int) -> None:
    await reg.rename(model_id, f"{rng.choice(NAME_STEMS)}-renamed-{counter}")


async def _archive(reg: Registry, rng: random.Random, model_id: str, counter: int) -> None:
    await reg.archive_model(model_id)


async def _delete(reg: Registry, rng: random.Random, model_id: str, counter: int) -> None:
    await reg.delete_model(model_id)


# (weight, action on an active model that has at least one version)
ACTIONS: tuple[tuple[float, Action], ...] = (
    (18, _new_version),
    (24, _metrics),
    (16, _stage),
    (10, _alias),
    (8, _version_metadata),
    (6, _model_metadata),
    (5, _promotion),
    (4, _rollback_or_policy),
    (4, _deployment),
    (2, _deprecate),
    (1.5, _expiry),
    (1, _restore_version),
    (1, _registry_policy),
    (2, _rename),
    (1.5, _archive),
    (0.7, _delete),
)


async def _random_step(
    reg: Registry, rng: random.Random, counter: int, weights: Sequence[float]
) -> None:
    models = [m for m, s in reg.states.items() if s.registered and not s.deleted]
    active = [m for m in models if not reg.states[m].archived]
    archived = [m for m in models if reg.states[m].archived]
    freed = sorted({s.name for s in reg.states.values() if s.deleted} - _names_in_use(reg))
    if freed and rng.random() < 0.05:
        # A deleted model's name, registered again: a new model, numbered from 1.
        await reg.register_model(rng.choice(freed), owner=rng.choice(OWNERS), tags=_tags(rng))
    elif not active or rng.random() < 0.06:
        stem, suffix = rng.choice(NAME_STEMS), rng.choice(NAME_SUFFIXES)
        await reg.register_model(
            f"{stem}{suffix}-{counter}", owner=rng.choice(OWNERS), tags=_tags(rng)
        )
    elif archived and rng.random() < 0.015:
        await reg.restore_model(rng.choice(archived))
    else:
        model_id = rng.choice(active)
        if not reg.states[model_id].versions:
            await _new_version(reg, rng, model_id, counter)
            return
        (action,) = rng.choices([a for _, a in ACTIONS], weights=weights)
        await action(reg, rng, model_id, counter)


def _names_in_use(reg: Registry) -> set[str]:
    return {s.name for s in reg.states.values() if s.registered and not s.deleted}


async def random_history(
    reg: Registry,
    rng: random.Random,
    n_commands: int,
    *,
    weights: Mapping[str, float] | None = None,
) -> int:
    """Attempt ``n_commands`` random commands; return how many the domain accepted.

    ``weights`` overrides the weight of actions by name (``{"deployment": 30}``), for a
    test that needs more of one kind of history than the usual mix gives."""
    chosen = [(weights or {}).get(a.__name__.lstrip("_"), w) for w, a in ACTIONS]
    unknown = set(weights or {}) - {a.__name__.lstrip("_") for _, a in ACTIONS}
    assert not unknown, f"no such actions: {unknown}"
    accepted = 0
    for _ in range(n_commands):
        reg.actor = rng.choice(("alice", "alice", "carol"))
        try:
            await _random_step(reg, rng, reg._ids + accepted, chosen)
            accepted += 1
        except DomainError:
            pass  # e.g. a gate or a separation-of-duties rule: a refusal the service would answer too
        finally:
            reg.actor = "alice"
    return accepted


# --- view contract checks (rebuild equals live, time travel equals live) ---------------------

Checksum = Callable[[asyncpg.Connection, Names], Awaitable[str]]


async def _live(conn: asyncpg.Connection, projection: Projection) -> Generation:
    return next(g for g in await generations(conn, projection.name) if g.status == "live")


async def check_rebuild_equals_live(
    reg: Registry,
    projection: Projection,
    checksum: Checksum,
    rng: random.Random,
    *,
    traffic_rounds: int = 0,
    commands_per_round: int = 15,
    rebuild_batch: int = 40,
) -> str:
    """Rebuild ``projection`` from position 0 while ``traffic_rounds`` rounds of random
    commands keep the live generation moving, then assert the rebuilt tables equal the live
    ones (before the switch) and the views after it. Returns the checksum."""
    conn = reg.conn
    await reg.project(projection)
    number = await start_rebuild(conn, projection)

    async def building() -> Generation:
        return next(g for g in await generations(conn, projection.name) if g.generation == number)

    async def catch_up(head: int) -> None:
        # One round of the worker, without its switch: live to the head, one rebuild batch.
        live = await advance(conn, projection, await _live(conn, projection), head=head, batch=1000)
        await advance(conn, projection, await building(), head=live, batch=rebuild_batch)

    behind = False
    for _ in range(traffic_rounds):
        await random_history(reg, rng, commands_per_round)
        await catch_up(await reg.seal())
        behind = (
            behind or (await building()).log_position < (await _live(conn, projection)).log_position
        )
    assert behind or not traffic_rounds, "the rebuild caught up at once: writes never ran beside it"
    head = await reg.seal()
    while (await building()).log_position < head or (
        await _live(conn, projection)
    ).log_position < head:
        await catch_up(head)
    live = await _live(conn, projection)
    expected = await checksum(conn, projection.generation_names(live.generation))
    assert await checksum(conn, projection.generation_names(number)) == expected
    assert await switch_if_caught_up(conn, projection)
    assert await checksum(conn, projection.view_names()) == expected
    return expected


async def record_live_positions(
    reg: Registry,
    projection: Projection,
    checksum: Checksum,
    *,
    batch: int = 7,
    observe: Callable[[asyncpg.Connection, Names], Awaitable[Any]] | None = None,
) -> list[tuple[int, str, Any]]:
    """Step ``projection`` to the head ``batch`` events at a time; after each step record
    (position, checksum of the live views, ``observe(conn, view names)``)."""
    conn = reg.conn
    await reg.seal()
    await ensure_projection(conn, projection)
    recorded = []
    while await step(conn, projection, batch=batch):
        position = (await _live(conn, projection)).log_position
        names = projection.view_names()
        seen = None if observe is None else await observe(conn, names)
        recorded.append((position, await checksum(conn, names), seen))
    return recorded


async def as_of(
    reg: Registry,
    projection: Projection,
    position: int,
    query: Callable[[asyncpg.Connection, Names], Awaitable[Any]],
    *,
    model_id: str | None = None,
    scratch: bool = False,
) -> Any:
    """``query`` over ``projection`` folded up to ``position``: into temporary tables in one
    transaction (``fold_as_of``), or with ``scratch`` into the unlogged scratch tables the
    API folds into, in short transactions (``folded_views``)."""
    if scratch:
        async with folded_views(reg.conn, [projection], position, model_id=model_id) as folded:
            return await query(reg.conn, folded[projection.name])
    async with reg.conn.transaction():
        names = await fold_as_of(reg.conn, [projection], position, model_id=model_id)
        return await query(reg.conn, names[projection.name])
