"""The registry's application service: API intentions -> commands with their context. I/O.

Handlers stay thin: they authorise, then call one method here. This module resolves model
names to ids, supplies what the pure deciders need and cannot read themselves (the
registry-wide policy, metric snapshots for gates, generated ids, the clock), claims and
releases unique model names in the append's transaction, and waits (bounded) for the
sealer so every write can answer with the log position of its last event.

A governed command carries the registry policy it was decided under. That policy lives in
another stream than the model's, so its append is guarded by the policy stream's version
as read (``EventStore.append(guards=...)``): if the policy changed meanwhile, the command
is built and decided again under the new one, so no decision lands under a policy that
was already replaced.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from eventlog.positions import SealSignal, sealed_position
from eventlog.store import EventStore, StaleGuardError
from events.base import Command, Decider
from events.errors import (
    ConcurrencyError,
    ConflictError,
    DomainError,
    NotFoundError,
    ValidationError,
)
from events.metrics import METRICS, LogMetrics, MetricInput, latest_values
from events.model.commands import Metrics, ModelCommand, RequestPromotion, TransitionStage
from events.model.decider import MODEL
from events.model.events import (
    ModelDeleted,
    ModelEvent,
    ModelRegistered,
    ModelRenamed,
    PromotionRequested,
)
from events.model.state import ModelState
from events.names import validate_model_name
from events.policy import GovernancePolicy, require_environment, requirement
from events.registry_policy import REGISTRY_POLICY, SetRegistryPolicy
from events.streams import (
    REGISTRY_POLICY_STREAM,
    metrics_stream,
    model_id_of,
    model_stream,
    name_key,
    request_key,
)
from service.commands.executor import CommandExecutor, Outcome, PreconditionFailedError
from service.commands.shared_reads import SharedReads

# How often a governed command is built again because the registry policy changed first.
_POLICY_ATTEMPTS = 5
# Model ids remembered by name (``Registry.known_id``).
_NAMES_KEPT = 10_000


_T = TypeVar("_T")


class NameMovedError(NotFoundError):
    """The model a remembered name led to no longer bears it, or is archived: the name
    must be looked up again."""


def bearing(name: str) -> Decider[ModelState, ModelCommand, ModelEvent]:
    """The model decider, deciding only for a live model named ``name`` (else
    ``NameMovedError``): a write sent to a model id remembered by name lands only if, in
    the state it is decided on, the model still bears that name."""

    def decide(command: ModelCommand, state: ModelState) -> list[ModelEvent]:
        if state.name != name or state.archived:
            raise NameMovedError(f"no live model is named {name!r} any more", name=name)
        return MODEL.decide(command, state)

    return replace(MODEL, decide=decide)


class _MetricsWantedError(Exception):
    """A governed command about to be built without metrics, under a policy with metric
    gates: its caller reads them and builds it again. Most registries gate nothing on
    metrics, and reading a version's metrics stream cost a transition a sixth of its CPU."""


@dataclass(frozen=True, slots=True)
class Written:
    """A command's result: its events, the stream state and version after it, and the log
    position of its last event (``None`` for a no-op, or if sealing took too long)."""

    model_id: str
    events: list[Any]
    state: Any
    stream_version: int
    position: int | None
    replayed: bool = False


def name_keys(events: Sequence[Any], _state: Any) -> tuple[list[str], list[str]]:
    """Model names are unique: claim on register and rename, release the old name (and a
    deleted model's); a
    promotion request's id points at its model."""
    claim: list[str] = []
    release: list[str] = []
    for event in events:
        if isinstance(event, ModelRegistered):
            claim.append(name_key(event.name))
        elif isinstance(event, ModelRenamed):
            claim.append(name_key(event.new_name))
            release.append(name_key(event.old_name))
        elif isinstance(event, ModelDeleted):
            release.append(name_key(event.name))  # the name may be registered again
        elif isinstance(event, PromotionRequested):
            # Lets an approver find the request's model the moment it exists.
            claim.append(request_key(event.request_id))
    return claim, release


class Registry:
    def __init__(
        self,
        store: EventStore,
        executor: CommandExecutor,
        *,
        seal_timeout: float = 5.0,
        seal_signal: SealSignal | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.store = store
        self.executor = executor
        self.seal_timeout = seal_timeout
        self.seal_signal = seal_signal
        self.clock = clock
        self.new_id = new_id
        self._ids_by_name: OrderedDict[str, str] = OrderedDict()
        self._located = SharedReads(self._locate)

    # --- lookups ---------------------------------------------------------------------

    async def model_id(self, name: str) -> str:
        owner = await self.store.owner_of(name_key(name))
        if owner is None:
            raise NotFoundError(f"no model is named {name!r}", name=name)
        return model_id_of(owner)

    async def locate(self, name: str) -> tuple[str, int]:
        """A model's id and stream version (its ETag), as one query that began after this
        call found them (shared with concurrent calls for the same name: ``SharedReads``)."""
        return await self._located.get(name)

    async def _locate(self, name: str) -> tuple[str, int]:
        row = await self.store.pool.fetchrow(
            "SELECT k.stream_id, s.version FROM unique_keys k JOIN streams s USING (stream_id) WHERE k.key = $1",
            name_key(name),
        )
        if row is None:
            raise NotFoundError(f"no model is named {name!r}", name=name)
        model_id = model_id_of(row["stream_id"])
        self._ids_by_name[name] = model_id
        self._ids_by_name.move_to_end(name)
        if len(self._ids_by_name) > _NAMES_KEPT:
            self._ids_by_name.popitem(last=False)
        return model_id, row["version"]

    def known_id(self, name: str) -> str | None:
        """The id of the model ``name`` led to when this process last looked it up, with no
        query: perhaps stale (renamed, archived or replaced elsewhere since), so only for a
        write executed with ``named=name``, which lands only if the name still holds."""
        return self._ids_by_name.get(name)

    def forget_name(self, name: str) -> None:
        self._ids_by_name.pop(name, None)

    async def on_named(self, name: str, act: Callable[[str, str | None], Awaitable[_T]]) -> _T:
        """``act(model_id, named)`` on the model ``name`` leads to, without a query to find
        it when this process remembers the id (``known_id``): ``act`` must then decide only
        if the model still bears the name (pass ``named`` to ``execute``). If it no longer
        does, or a refusal came from the remembered id while the name now leads elsewhere,
        the name is looked up and ``act`` runs on that id, as any command (``named=None``)."""
        known = self.known_id(name)
        if known is not None:
            try:
                return await act(known, name)
            except NameMovedError:
                self.forget_name(name)
            except DomainError:
                # e.g. a manifest checked against the remembered model's blobs before the
                # decision could see the name had moved: it stands only if it had not.
                if (await self.locate(name))[0] == known:
                    raise
        model_id, _ = await self.locate(name)
        return await act(model_id, None)

    async def locate_request(self, request_id: str) -> tuple[str, str, int]:
        """The model name, model id and version a promotion request is about."""
        owner = await self.store.owner_of(request_key(request_id))
        if owner is None:
            raise NotFoundError(f"no promotion request {request_id!r}", request_id=request_id)
        _, state = await self.executor.state_of(owner, MODEL)
        return state.name, state.model_id, state.requests[request_id].version

    async def model(self, name: str) -> tuple[str, int, ModelState]:
        """A model's id, stream version (the ETag) and current state, by name: one query
        when the executor's cached state is at the version that query found."""
        model_id, version = await self.locate(name)
        version, state = await self.executor.state_at(model_stream(model_id), MODEL, version)
        return model_id, version, state

    async def registry_policy(self) -> GovernancePolicy:
        _, state = await self.executor.state_of(REGISTRY_POLICY_STREAM, REGISTRY_POLICY)
        return state.policy

    async def registry_policy_revision(self) -> tuple[int, GovernancePolicy]:
        version, state = await self.executor.state_of(REGISTRY_POLICY_STREAM, REGISTRY_POLICY)
        return version, state.policy

    async def metric_snapshot(self, model_id: str, versions: Iterable[int | None]) -> Metrics:
        """Latest metric values of ``versions`` (``None``s skipped), for metric gates.

        A number below 1 names no version and has no metrics: the decider refuses it (404).
        """
        snapshot: Metrics = {}
        for number in {v for v in versions if v is not None and v >= 1}:
            _, state = await self.executor.state_of(metrics_stream(model_id, number), METRICS)
            snapshot[number] = latest_values(state)
        return snapshot

    # --- writes ----------------------------------------------------------------------

    async def execute(
        self,
        model_id: str,
        command: Command,
        *,
        if_version: int | None = None,
        id_seed: str | None = None,
        guards: Mapping[str, int] | None = None,
        previous_seed: str | None = None,
        named: str | None = None,
    ) -> Written:
        """``previous_seed``: see ``CommandExecutor.execute``. ``named``: decide only if the
        model is live and still bears that name (``bearing``)."""
        outcome = await _conditional(
            if_version,
            self.executor.execute(
                model_stream(model_id),
                MODEL if named is None else bearing(named),
                command,
                if_version=if_version,
                id_seed=id_seed,
                keys=name_keys,
                guards=guards,
                previous_seed=previous_seed,
            ),
        )
        return await self.written_from(model_id, outcome)

    async def under_registry_policy(
        self,
        model_id: str,
        build: Callable[[GovernancePolicy], Command],
        *,
        if_version: int | None = None,
        id_seed: str | None = None,
        previous_seed: str | None = None,
        named: str | None = None,
        guards: Mapping[str, int] | None = None,
    ) -> Written:
        """Build a governed command from the registry policy in force and execute it, guarded
        by that policy's version; if the policy changes first, build and decide again.
        ``guards``: other streams the command also depends on (``execute``); if one of them
        moved, the ``StaleGuardError`` reaches the caller after the policy's tries.

        The first try builds on the policy this process last saw, without reading it: the
        guard lands the events only if the policy is still at that revision. A refusal or
        a no-op lands nothing for the guard to check, so it is answered only once a fresh
        read shows the policy it was decided under is still the one in force."""
        fresh = False
        for attempt in range(1, _POLICY_ATTEMPTS + 1):
            revision, policy, fresh = await self.policy_for_decision(fresh=fresh)
            try:
                command = build(policy)  # may refuse, e.g. a comment the policy requires
                written = await self.execute(
                    model_id,
                    command,
                    if_version=if_version,
                    id_seed=id_seed,
                    guards={**(guards or {}), REGISTRY_POLICY_STREAM: revision},
                    previous_seed=previous_seed,
                    named=named,
                )
            except StaleGuardError:
                fresh = True
                if attempt == _POLICY_ATTEMPTS:
                    raise
                continue
            except DomainError:
                if fresh or not await self._policy_moved(revision):
                    raise
                fresh = True
                continue
            if written.events or fresh or not await self._policy_moved(revision):
                return written
            fresh = True
        # Only the first try can be decided on a cached policy, so the last one is fresh,
        # and a fresh try returns or raises.
        raise AssertionError("unreachable")  # pragma: no cover

    async def policy_for_decision(self, *, fresh: bool) -> tuple[int, GovernancePolicy, bool]:
        """The registry policy's revision and rules to decide a command under, and whether
        they were read afresh: unless ``fresh`` is asked for, the ones this process last saw."""
        known = None if fresh else self.executor.cached(REGISTRY_POLICY_STREAM)
        if known is None:
            revision, policy = await self.registry_policy_revision()
            return revision, policy, True
        return known[0], known[1].policy, False

    async def _policy_moved(self, revision: int) -> bool:
        """Has the registry policy moved past ``revision``? (Read afresh.)"""
        current, _ = await self.registry_policy_revision()
        return current != revision

    async def recorded(self, model_id: str, id_seed: str | None) -> Written | None:
        """The first answer of a retried model command whose events are recorded: checked
        before the checks that build the command, which its own events would now fail."""
        if id_seed is None:
            return None
        outcome = await self.executor.recorded(model_stream(model_id), MODEL, id_seed)
        return None if outcome is None else await self.written_from(model_id, outcome)

    async def register_model(
        self, build: Callable[[str], Command], *, id_seed: str | None = None
    ) -> Written:
        """``build(model_id)`` makes the RegisterModel command for a fresh id."""
        # A retried request must land on the same stream to be recognised as a retry.
        model_id = self.new_id() if id_seed is None else self.seeded_model_id(id_seed)
        return await self.execute(model_id, build(model_id), id_seed=id_seed)

    @staticmethod
    def seeded_model_id(id_seed: str) -> str:
        """The id a model registered under ``id_seed`` gets, whichever replica registers it."""
        return uuid.uuid5(uuid.NAMESPACE_URL, f"modelreg:{id_seed}").hex

    async def log_metrics(
        self,
        name: str,
        version: int,
        metrics: Sequence[MetricInput],
        *,
        actor: str,
        id_seed: str | None = None,
    ) -> Written:
        model_id, _, state = await self.model(name)
        state.version(version)  # NotFoundError names the version
        if state.archived:
            raise ConflictError(f"model {name!r} is archived", name=name)
        command = LogMetrics(
            actor=actor,
            now=self.clock(),
            model_id=model_id,
            version=version,
            metrics=tuple(metrics),
        )
        outcome = await self.executor.execute(
            metrics_stream(model_id, version), METRICS, command, id_seed=id_seed
        )
        return await self.written_from(model_id, outcome)

    async def transition(
        self,
        name: str,
        version: int,
        to_stage: str,
        *,
        actor: str,
        comment: str,
        if_version: int | None = None,
        id_seed: str | None = None,
        archive_existing: bool = False,
        environment: str | None = None,
        at: datetime | None = None,
        found: tuple[str, ModelState] | None = None,
    ) -> tuple[Written, str | None]:
        """Move a version when the policy allows it directly; otherwise open a promotion
        request. Returns the result and the request id (``None`` when done directly).
        ``archive_existing``: see ``TransitionStage``. ``at``: the decision's time (the
        clock's now by default), for a caller that answers with it. ``found``: the model's
        id and state as the caller has just read them (``model``), to save reading them
        again: the command is decided on the stream's own state and lands only at its
        version, so an older state here costs no wrong decision."""
        if found is None:
            model_id, _, state = await self.model(name)
        else:
            model_id, state = found
        if (earlier := await self.recorded(model_id, id_seed)) is not None:
            requested = [e for e in earlier.events if isinstance(e, PromotionRequested)]
            return earlier, requested[0].request_id if requested else None
        current = state.version(version)
        now = at or self.clock()
        opened: list[str] = []

        def build(registry_policy: GovernancePolicy, metrics: Metrics) -> Command:
            opened.clear()
            policy = state.effective_policy(registry_policy)
            staying = archive_existing and current.stage == to_stage  # nothing to approve
            # ``to``: the field the HTTP body names the target stage in.
            needed = None if staying else requirement(policy, current.stage, to_stage, None, "to")
            # A refused environment is a bad request whatever the move needs.
            require_environment(policy, to_stage, environment, "environment")
            if needed is None or needed.approvals == 0:
                return TransitionStage(
                    actor=actor,
                    now=now,
                    registry_policy=registry_policy,
                    version=version,
                    to_stage=to_stage,
                    comment=comment,
                    metrics=metrics,
                    archive_existing=archive_existing,
                    environment=environment,
                )
            if not comment.strip():
                raise ValidationError(
                    "comment",
                    "required",
                    f"{current.stage} -> {to_stage} needs approval, so it opens a request: say why in the comment",
                )
            opened.append(self.request_id_for(id_seed))
            return RequestPromotion(
                actor=actor,
                now=now,
                registry_policy=registry_policy,
                request_id=opened[0],
                version=version,
                justification=comment,
                target_stage=to_stage,
                metrics=metrics,
                environment=environment,
            )

        written = await self._under_policy_with_metrics(
            model_id,
            state,
            [version, state.champion(environment)],
            build,
            if_version=if_version,
            id_seed=id_seed,
        )
        return written, (opened[0] if opened else None)

    def request_id_for(self, id_seed: str | None) -> str:
        """A new request id; a retried request (same seed) gets the same one."""
        return (
            uuid.uuid5(uuid.NAMESPACE_URL, f"modelreg:request:{id_seed}").hex
            if id_seed
            else self.new_id()
        )

    async def governed(
        self,
        name: str,
        build: Callable[[str, ModelState, GovernancePolicy, Metrics], Command],
        *,
        metric_versions: Callable[[ModelState], Iterable[int | None]] = lambda s: [s.production],
        if_version: int | None = None,
        id_seed: str | None = None,
    ) -> Written:
        """Run a command that needs the registry policy and metric snapshots."""
        model_id, _, state = await self.model(name)
        if (earlier := await self.recorded(model_id, id_seed)) is not None:
            return earlier
        return await self._under_policy_with_metrics(
            model_id,
            state,
            metric_versions(state),
            lambda registry_policy, metrics: build(model_id, state, registry_policy, metrics),
            if_version=if_version,
            id_seed=id_seed,
        )

    async def _under_policy_with_metrics(
        self,
        model_id: str,
        state: ModelState,
        versions: Iterable[int | None],
        build: Callable[[GovernancePolicy, Metrics], Command],
        *,
        if_version: int | None,
        id_seed: str | None,
    ) -> Written:
        """``under_registry_policy`` for a command that may run metric gates: it is built
        without metrics (``{}``) unless the policy deciding it has gates, and then with the
        latest values of ``versions``, read only then."""
        metrics: Metrics | None = None

        def built(registry_policy: GovernancePolicy) -> Command:
            if metrics is None and state.effective_policy(registry_policy).has_metric_gates():
                raise _MetricsWantedError
            return build(registry_policy, metrics or {})

        while True:
            try:
                return await self.under_registry_policy(
                    model_id, built, if_version=if_version, id_seed=id_seed
                )
            except _MetricsWantedError:
                metrics = await self.metric_snapshot(model_id, versions)

    async def set_registry_policy(
        self, policy: GovernancePolicy, *, actor: str, comment: str, if_version: int | None = None
    ) -> Written:
        command = SetRegistryPolicy(actor=actor, now=self.clock(), policy=policy, comment=comment)
        outcome = await _conditional(
            if_version,
            self.executor.execute(
                REGISTRY_POLICY_STREAM, REGISTRY_POLICY, command, if_version=if_version
            ),
        )
        return await self.written_from("", outcome)

    async def written_from(self, model_id: str, outcome: Outcome[Any, Any]) -> Written:
        """The result of an executed command, with the log position of its last event."""
        position = None
        if outcome.append is not None:
            position = await sealed_position(
                self.store.pool,
                outcome.append.last_seq,
                timeout=self.seal_timeout,
                signal=self.seal_signal,
            )
        return Written(
            model_id, outcome.events, outcome.state, outcome.version, position, outcome.replayed
        )

    def now(self) -> datetime:
        return self.clock()

    @staticmethod
    def validate_name(name: str) -> str:
        return validate_model_name(name)


async def _conditional(
    if_version: int | None, execution: Awaitable[Outcome[Any, Any]]
) -> Outcome[Any, Any]:
    """A conditional write (If-Match) that another writer beat to the stream -- on another
    replica, between reading the version and appending -- failed its precondition (412),
    just as if the other write had come first."""
    try:
        return await execution
    except StaleGuardError:
        raise  # the registry policy moved, not the stream the precondition names
    except ConcurrencyError as exc:
        if if_version is None:
            raise
        raise PreconditionFailedError(
            f"{exc.stream_id} moved past version {if_version} meanwhile",
            stream_id=exc.stream_id,
            expected_version=if_version,
            actual_version=exc.actual_version,
        ) from exc
