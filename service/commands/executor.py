"""Executing commands: load state, decide, append at the version read, retry on conflict. I/O.

``load -> decide -> append(expected_version)``. The state of a stream is kept in an LRU
cache (and in periodic snapshots) together with the version it reflects; before each
decision only the events after that version are read, so a command's cost does not grow
with the length of its stream. A conflict means another writer got in first: the cache
entry is dropped and the command is decided again against the new state, a few times,
before the caller gets the ``ConcurrencyError`` (HTTP 409). With ``if_version`` (HTTP
If-Match) there is no retry: the caller asked for that exact version.

Snapshots are spaced by what the state weighs: at least ``snapshot_every`` events apart,
and one event per ``snapshot_bytes_per_event`` bytes of the last snapshot's encoded
state. Writing them then costs every event about that many bytes whatever the state's
size (a model of 6,000 versions weighed ~3 MB and took 52 ms of Postgres per snapshot,
every 200 creates), and a cold load folds at most as many events as it read bytes of
snapshot, divided by that figure.

Within one process, commands on the same stream take turns (a per-stream lock), so they
never race each other and no attempt is wasted; conflicts then only come from other
processes (API replicas) and are retried with a jittered backoff.

Group commit: the commands that queue for a stream's turn while an append is in flight are
decided one after another, each on the state the ones before it produced, and their events
appended in one transaction (``EventStore.append_parts``): a stream written by many callers
at once pays for one round trip and one commit per turn, not per command. Each command
still gets its own answer: its events, the state and stream version right after them, or
its own refusal. If the append fails for any reason but a version conflict, every command
of the turn is executed again alone, so one command's error never becomes another's.
A group shares one set of guards (commands decided under the same registry policy
revision): if a guard moved, every command of the group is answered ``StaleGuardError``
and built again by its caller. A retry under an idempotency seed whose events are
recorded is answered with them before its group is decided; two copies of one request never
share a group. Commands that name an exact version (If-Match) take their turn alone.

Each event's envelope records the correlation id of the work that caused it: the one
passed in, else ``CORRELATION_ID`` of the current context (the HTTP layer sets it per
request; see service.api.tracing).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import asyncpg
import msgspec

from eventlog.store import AppendPart, AppendResult, EventStore, Metadata, StaleGuardError
from events.base import Command, Decider, Event
from events.envelope import decode_envelope
from events.errors import ConcurrencyError, ConflictError, DomainError
from events.names import validate_comment
from service.identity.subjects import SubjectDirectory

log = logging.getLogger(__name__)

S = TypeVar("S")
E = TypeVar("E", bound=Event)
C = TypeVar("C", bound=Command)

# Keys to claim and release in the append's transaction, given the decided events.
KeyRule = Callable[[Sequence[Any], Any], tuple[Sequence[str], Sequence[str]]]

_ID_NAMESPACE = uuid.UUID("6f1f6a52-4d0b-4bd3-9c3b-6e8f3f0b2a11")

# The correlation id of the request (or job) being served, for the events it appends.
CORRELATION_ID: ContextVar[uuid.UUID | None] = ContextVar("modelreg_correlation_id", default=None)


class PreconditionFailedError(ConflictError):
    """If-Match named a version the stream is no longer at."""

    code = "precondition_failed"


@dataclass(frozen=True, slots=True)
class Outcome(Generic[S, E]):
    """What a command did: its events (none for a no-op), the state after, the append."""

    events: list[E]
    state: S
    version: int
    append: AppendResult | None

    @property
    def replayed(self) -> bool:
        return self.append is not None and self.append.replayed


@dataclass(slots=True)
class _Queued:
    """A command waiting for its stream's turn, and where its answer goes."""

    decider: Decider[Any, Any, Any]
    command: Command
    metadata: Metadata
    keys: KeyRule | None
    guards: dict[str, int]
    id_seed: str | None
    previous_seed: str | None
    answer: asyncio.Future[Outcome[Any, Any]]

    def seeds(self) -> list[str]:
        return _seeds(self.previous_seed, self.id_seed)


@dataclass(slots=True)
class _Turns:
    """A stream's turn: the lock every execution on it holds, the commands queued for the
    next group commit, and the task draining that queue (``None`` when it is empty)."""

    lock: asyncio.Lock
    queue: deque[_Queued]
    drainer: asyncio.Task[None] | None = None
    users: int = 0


# One command records at most this many events (a bound for reading one back).
_MAX_EVENTS_PER_COMMAND = 1000
_RECORDED_HEAD = "SELECT stream_id, stream_position FROM events WHERE event_id = $1"
_RECORDED_ANY = "SELECT event_id FROM events WHERE event_id = ANY ($1::uuid[])"
_RECORDED_FROM = (
    "SELECT seq, tx_id, event_id, stream_position, envelope FROM events"
    " WHERE stream_id = $1 AND stream_position >= $2 ORDER BY stream_position LIMIT $3"
)


def event_ids_for(seed: str, count: int) -> list[uuid.UUID]:
    """Deterministic event ids for a command retried under the same idempotency seed."""
    return list(itertools.islice(seeded_ids(seed), count))


def seeded_ids(seed: str) -> Iterator[uuid.UUID]:
    """``event_ids_for(seed, n)`` for every ``n``, one at a time."""
    for i in itertools.count():
        yield uuid.uuid5(_ID_NAMESPACE, f"{seed}:{i}")


class CommandExecutor:
    def __init__(
        self,
        store: EventStore,
        *,
        cache_size: int = 20_000,
        snapshot_every: int = 200,
        snapshot_bytes_per_event: int = 1000,
        max_attempts: int = 10,
        on_conflict: Callable[[], None] | None = None,
        subjects: SubjectDirectory | None = None,
        group_commit: int = 64,
    ) -> None:
        """``subjects``: record actors by pseudonymous subject id (``service.identity.
        subjects``); without it, as the command names them (tests of the domain alone)."""
        self.store = store
        self.subjects = subjects
        self.cache_size = cache_size
        self.snapshot_every = snapshot_every
        self.snapshot_bytes_per_event = snapshot_bytes_per_event
        # Per stream: the version of its last snapshot (taken or loaded) and the events to
        # the next, learnt from that snapshot's size.
        self._snapshots: dict[str, tuple[int, int]] = {}
        self.max_attempts = max_attempts
        self._on_conflict = on_conflict
        self._cache: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self._background: set[asyncio.Task[None]] = set()
        self._turns: dict[str, _Turns] = {}
        # At most this many queued commands share one append (1: every command alone).
        self.group_commit = group_commit

    async def state_of(self, stream_id: str, decider: Decider[S, Any, Any]) -> tuple[int, S]:
        """The current state of a stream and the version it reflects."""
        cached = self._cache.get(stream_id)
        if cached is not None:
            self._cache.move_to_end(stream_id)
            version, state = cached
        else:
            version, state = await self._from_snapshot(stream_id, decider)
        newer = await self.store.read_stream(stream_id, after=version)
        if newer:
            state = decider.fold((self.store.codec.decode(e.envelope) for e in newer), state)
            version = newer[-1].stream_position
        self._remember(stream_id, version, state)
        return version, state

    async def execute(
        self,
        stream_id: str,
        decider: Decider[S, Any, E],
        command: Command,
        *,
        if_version: int | None = None,
        id_seed: str | None = None,
        keys: KeyRule | None = None,
        correlation_id: uuid.UUID | None = None,
        guards: Mapping[str, int] | None = None,
        previous_seed: str | None = None,
    ) -> Outcome[S, E]:
        """``guards``: other streams the command was built from, at the versions read
        (``EventStore.append``); if one moved, ``StaleGuardError`` reaches the caller, who
        must build the command again from what that stream holds now.

        ``previous_seed``: another seed an earlier copy of the same request may have been
        recorded under (MLflow's derived keys: the previous window's, see
        ``service.api.mlflow.retries``); what it recorded answers this command, as for
        ``id_seed``, and it is looked up in the same query."""
        turns = self._turns.get(stream_id)
        if turns is None:
            turns = self._turns[stream_id] = _Turns(asyncio.Lock(), deque())
        turns.users += 1
        try:
            if if_version is not None or self.group_commit < 2:
                async with turns.lock:
                    return await self._execute(
                        stream_id,
                        decider,
                        command,
                        if_version,
                        id_seed,
                        keys,
                        correlation_id,
                        guards,
                        previous_seed,
                    )
            outcome: Outcome[S, E] = await self._queued(
                stream_id,
                turns,
                decider,
                command,
                keys=keys,
                guards=dict(guards or {}),
                id_seed=id_seed,
                previous_seed=previous_seed,
                correlation_id=correlation_id,
            )
            return outcome
        finally:
            turns.users -= 1
            if turns.users == 0 and turns.drainer is None and self._turns.get(stream_id) is turns:
                del self._turns[stream_id]

    async def _queued(
        self,
        stream_id: str,
        turns: _Turns,
        decider: Decider[Any, Any, Any],
        command: Command,
        *,
        keys: KeyRule | None,
        guards: dict[str, int],
        id_seed: str | None,
        previous_seed: str | None,
        correlation_id: uuid.UUID | None,
    ) -> Outcome[Any, Any]:
        """Queue a command for the stream's next group commit and wait for its answer. The
        queue is drained by a task of its own, so a caller that goes away (its request was
        cancelled) never leaves the commands it was carrying unanswered."""
        command = await self.pseudonymous(command)
        metadata = Metadata(
            actor=command.actor,
            occurred_at=command.now,
            correlation_id=correlation_id or CORRELATION_ID.get(),
        )
        answer: asyncio.Future[Outcome[Any, Any]] = asyncio.get_running_loop().create_future()
        turns.queue.append(
            _Queued(decider, command, metadata, keys, guards, id_seed, previous_seed, answer)
        )
        if turns.drainer is None:
            turns.drainer = asyncio.get_running_loop().create_task(self._drain(stream_id, turns))
        return await answer

    async def _drain(self, stream_id: str, turns: _Turns) -> None:
        """Take the stream's turn and execute what is queued, a group at a time, until the
        queue is empty."""
        group: list[_Queued] = []
        failure: Exception | None = None
        try:
            while turns.queue:
                async with turns.lock:
                    group = _next_group(turns.queue, self.group_commit)
                    if group:
                        rest = await self._commit_group(stream_id, group)
                        turns.queue.extendleft(reversed(rest))
        except Exception as exc:  # a defect here must still answer every caller
            log.exception("executing the queued commands of %s failed", stream_id)
            failure = exc
        finally:
            turns.drainer = None
            # Only when this task failed or was cancelled (the process stops): whoever still
            # waits gets that failure, or is cancelled as it would have been alone.
            for queued in (*group, *turns.queue):
                if queued.answer.done():
                    continue
                if failure is None:
                    queued.answer.cancel()
                else:
                    queued.answer.set_exception(failure)
            turns.queue.clear()
            if turns.users == 0 and self._turns.get(stream_id) is turns:
                del self._turns[stream_id]

    async def _commit_group(self, stream_id: str, group: list[_Queued]) -> list[_Queued]:
        """Execute ``group`` as one append; answer each command. Returns the commands left
        for the next turn (those after one that claims or releases a unique key)."""
        group = await self._unrecorded(stream_id, group)
        if len(group) < 2:
            for queued in group:
                await self._answer_alone(stream_id, queued)
            return []
        left: list[_Queued] = []  # what the last decision left for the next turn
        try:
            await self._decide_and_append_group(stream_id, group, left)
        except ConcurrencyError as exc:  # a guard moved, or conflicts outlasted the retries
            for queued in _tried(group, left):
                _answer(queued, exception=exc)
        except DomainError:
            # A refusal of the whole append (a unique key taken, an event that cannot be
            # recorded), certain to have written nothing: each command is tried alone, so
            # only the one it concerns is refused.
            log.debug("group commit on %s refused; executing its commands alone", stream_id)
            for queued in _tried(group, left):
                await self._answer_alone(stream_id, queued)
        except Exception as exc:  # noqa: BLE001 one failure, every caller's to see
            # Not knowing whether the append committed (the connection went away), trying
            # again could record a command twice: each caller sees what one alone would.
            for queued in _tried(group, left):
                _answer(queued, exception=exc)
        return left

    async def _unrecorded(self, stream_id: str, group: list[_Queued]) -> list[_Queued]:
        """``group`` without the retries whose events are recorded, answered here with
        what they recorded, as a command alone would be (one query for the whole group)."""
        firsts = {seed: event_ids_for(seed, 1)[0] for q in group for seed in q.seeds()}
        if not firsts:
            return group
        found = {
            r["event_id"] for r in await self.store.pool.fetch(_RECORDED_ANY, [*firsts.values()])
        }
        answered: set[int] = set()
        for queued in group:
            for seed in (s for s in queued.seeds() if firsts[s] in found):
                try:
                    earlier = await self.recorded(stream_id, queued.decider, seed)
                except Exception as exc:  # noqa: BLE001 the caller's to see, as if alone
                    _answer(queued, exception=exc)
                    answered.add(id(queued))
                    break
                if earlier is not None:
                    _answer(queued, earlier)
                    answered.add(id(queued))
                    break
        return [q for q in group if id(q) not in answered]

    async def _answer_alone(self, stream_id: str, queued: _Queued) -> None:
        try:
            for seed in queued.seeds():
                earlier = await self.recorded(stream_id, queued.decider, seed)
                if earlier is not None:
                    _answer(queued, earlier)
                    return
            outcome = await self._decide_and_append(
                stream_id,
                queued.decider,
                queued.command,
                queued.metadata,
                None,
                queued.id_seed,
                queued.keys,
                queued.guards,
            )
        except Exception as exc:  # noqa: BLE001 the caller's to see, as if it ran itself
            _answer(queued, exception=exc)
        else:
            _answer(queued, outcome)

    async def _decide_and_append_group(
        self, stream_id: str, group: list[_Queued], left: list[_Queued]
    ) -> None:
        """Decide each command on the state the ones before it produced and append all
        their events at once; ``left`` receives the commands deferred to the next turn. A
        refusal or a no-op is answered only once an append proved the state it was decided
        on current (or the state was read from the stream)."""
        decider = group[0].decider
        optimistic = True
        attempt = 1
        while True:
            cached = self._cache.get(stream_id) if optimistic else None
            if cached is None:
                optimistic = False
                version, state = await self.state_of(stream_id, decider)
            else:
                version, state = cached
            decided = _decide_group(group, decider, version, state)
            left[:] = decided.rest
            if not decided.parts:
                if optimistic:
                    optimistic = False  # nothing appended proves the cache current
                    continue
                decided.answer_all(iter(()))
                return
            try:
                results = await self.store.append_parts(
                    stream_id,
                    version,
                    decided.parts,
                    claim=decided.claim,
                    release=decided.release,
                    guards=group[0].guards,
                )
            except StaleGuardError:
                raise  # every command of the group was decided under what moved
            except ConcurrencyError as exc:
                self.forget(stream_id)
                if optimistic:
                    optimistic = False
                else:
                    await self._after_conflict(exc, attempt, None)
                    attempt += 1
                continue
            decided.answer_all(iter(results))
            self._remember(stream_id, decided.version, decided.state)
            if self._snapshot_due(stream_id, version, decided.version):
                self._snapshot_later(stream_id, decided.version, decided.state, decider)
            return

    async def _execute(
        self,
        stream_id: str,
        decider: Decider[S, Any, E],
        command: Command,
        if_version: int | None,
        id_seed: str | None,
        keys: KeyRule | None,
        correlation_id: uuid.UUID | None,
        guards: Mapping[str, int] | None = None,
        previous_seed: str | None = None,
    ) -> Outcome[S, E]:
        command = await self.pseudonymous(command)
        metadata = Metadata(
            actor=command.actor,
            occurred_at=command.now,
            correlation_id=correlation_id or CORRELATION_ID.get(),
        )
        for seed in _seeds(previous_seed, id_seed):
            # A retry of a command whose events are recorded (its answer was lost) gets that
            # first answer: deciding again against the state it produced would refuse it
            # (the model already exists, the version is already in that stage).
            earlier = await self.recorded(stream_id, decider, seed)
            if earlier is not None:
                return earlier
        return await self._decide_and_append(
            stream_id, decider, command, metadata, if_version, id_seed, keys, guards
        )

    async def _decide_and_append(
        self,
        stream_id: str,
        decider: Decider[S, Any, E],
        command: Command,
        metadata: Metadata,
        if_version: int | None,
        id_seed: str | None,
        keys: KeyRule | None,
        guards: Mapping[str, int] | None = None,
    ) -> Outcome[S, E]:
        # The first try may decide on the state this process cached, without asking the
        # stream whether it moved: the append's expected version makes that safe, since it
        # only lands if the stream is still at the cached version (whose state is exact).
        # A refusal or a no-op is never answered from the cache, nor an If-Match.
        optimistic = if_version is None
        attempt = 1
        while True:
            decided = self._decided_on_cache(stream_id, decider, command) if optimistic else None
            if decided is not None:
                version, state, new_events = decided
            else:
                optimistic = False
                version, state = await self.state_of(stream_id, decider)
                _check_precondition(stream_id, version, if_version)
                new_events = decider.decide(command, state)
                if not new_events:
                    return Outcome([], state, version, None)
            claim, release = keys(new_events, state) if keys else ((), ())
            try:
                result = await self.store.append(
                    stream_id,
                    version,
                    new_events,
                    metadata,
                    event_ids=event_ids_for(id_seed, len(new_events)) if id_seed else None,
                    claim=claim,
                    release=release,
                    guards=guards,
                )
            except StaleGuardError:
                raise  # the command itself is stale: deciding it again would not help
            except ConcurrencyError as exc:
                self.forget(stream_id)
                if optimistic:
                    optimistic = False  # the cache was behind: decide on the stream itself
                else:
                    await self._after_conflict(exc, attempt, if_version)
                    attempt += 1
                continue
            if result.replayed and id_seed is not None:
                # An attempt with the same ids was recorded since the check above (a copy
                # racing this one): answer with what it did.
                self.forget(stream_id)
                earlier = await self.recorded(stream_id, decider, id_seed)
                if earlier is not None:
                    return earlier
            state = decider.fold(new_events, state)
            self._remember(stream_id, result.stream_version, state)
            if self._snapshot_due(stream_id, version, result.stream_version):
                self._snapshot_later(stream_id, result.stream_version, state, decider)
            return Outcome(new_events, state, result.stream_version, result)

    async def _after_conflict(
        self, conflict: ConcurrencyError, attempt: int, if_version: int | None
    ) -> None:
        """Back off before another try, or give up (the conflict reaches the caller)."""
        if self._on_conflict is not None:
            self._on_conflict()
        if if_version is not None or attempt == self.max_attempts:
            raise conflict
        await asyncio.sleep(random.uniform(0, 0.003 * attempt))  # noqa: S311 jitter, not crypto

    def _decided_on_cache(
        self, stream_id: str, decider: Decider[S, Any, E], command: Command
    ) -> tuple[int, S, list[E]] | None:
        """The cached version and state of the stream with the events ``command`` yields on
        it; None when nothing is cached or the command is refused or a no-op there."""
        cached = self._cache.get(stream_id)
        if cached is None:
            return None
        try:
            new_events = list(decider.decide(command, cached[1]))
        except DomainError:
            return None
        if not new_events:
            return None
        self._cache.move_to_end(stream_id)
        return cached[0], cached[1], new_events

    async def recorded(
        self, stream_id: str, decider: Decider[S, Any, E], id_seed: str
    ) -> Outcome[S, E] | None:
        """What an earlier execution under ``id_seed`` recorded on ``stream_id``, as its
        own answer: its events, the stream version it wrote (its ETag, not the stream's
        current one) and the state at that version; ``None`` if nothing was recorded."""
        first = event_ids_for(id_seed, 1)[0]
        head = await self.store.pool.fetchrow(_RECORDED_HEAD, first)
        if head is None or head["stream_id"] != stream_id:
            return None
        mine = await self._seeded_rows(stream_id, head["stream_position"], id_seed)
        events: list[E] = [
            self.store.codec.decode(decode_envelope(bytes(r["envelope"])))  # type: ignore[misc]
            for r in mine
        ]
        version = mine[-1]["stream_position"]
        result = AppendResult(
            stream_id=stream_id,
            stream_version=version,
            last_seq=mine[-1]["seq"],
            tx_id=mine[-1]["tx_id"],
            replayed=True,
        )
        return Outcome(events, await self._state_at(stream_id, decider, version), version, result)

    async def _seeded_rows(self, stream_id: str, start: int, id_seed: str) -> list[Any]:
        """The rows from ``start`` on whose event ids are the seed's ids in order: one
        command's events are contiguous in its stream. Read a few at a time and checked
        as read, so a retry of a write with a long stream after it reads what it wrote,
        not everything since (up to a thousand rows, each with its id computed)."""
        ids = seeded_ids(id_seed)
        mine: list[Any] = []
        page = 8
        while len(mine) < _MAX_EVENTS_PER_COMMAND:
            rows = await self.store.pool.fetch(_RECORDED_FROM, stream_id, start + len(mine), page)
            for row in rows:
                if row["event_id"] != next(ids):
                    return mine
                mine.append(row)
            if len(rows) < page:
                return mine
            page = min(page * 4, _MAX_EVENTS_PER_COMMAND - len(mine))
        return mine

    async def _state_at(self, stream_id: str, decider: Decider[S, Any, Any], version: int) -> S:
        """The state right after ``version``: the cached one when the stream is still
        there, else folded from the start (only retries of older writes pay for that)."""
        current, state = await self.state_of(stream_id, decider)
        if current == version:
            return state
        earlier = await self.store.read_stream(stream_id, up_to=version)
        return decider.fold(
            (self.store.codec.decode(e.envelope) for e in earlier), decider.initial_state()
        )

    async def state_at(
        self, stream_id: str, decider: Decider[S, Any, Any], version: int
    ) -> tuple[int, S]:
        """The state of a stream whose version the caller has just read, and the version
        it reflects: the cached state when it is at exactly that version (no query: what
        hot reads and a write's checks need), else read afresh (then perhaps newer)."""
        cached = self._cache.get(stream_id)
        if cached is not None and cached[0] == version:
            self._cache.move_to_end(stream_id)
            state: S = cached[1]
            return version, state
        return await self.state_of(stream_id, decider)

    def cached(self, stream_id: str) -> tuple[int, Any] | None:
        """The version and state of ``stream_id`` this process last saw, without a query:
        perhaps stale, so only for decisions an append's guard or expected version checks."""
        return self._cache.get(stream_id)

    def forget(self, stream_id: str) -> None:
        self._cache.pop(stream_id, None)

    async def execute_beside(
        self,
        stream_id: str,
        decider: Decider[S, C, E],
        command: C,
        *,
        actor: str,
        beside: Callable[[asyncpg.Connection], Awaitable[None]],
        id_seed: str | None = None,
    ) -> Outcome[S, E]:
        """Decide ``command`` and append its events in one transaction with ``beside``, a
        row the caller keeps outside the events (a token's credential, a webhook's secret):
        both are written or neither. Its errors (a unique violation, ConcurrencyError) are
        the caller's to name."""
        command = await self.pseudonymous(command)
        if self.subjects is not None:
            actor, _ = await self.subjects.pseudonymous(actor)
        version, state = await self.state_of(stream_id, decider)
        events = decider.decide(command, state)
        metadata = Metadata(
            actor=actor, occurred_at=command.now, correlation_id=CORRELATION_ID.get()
        )
        async with self.store.pool.acquire() as pooled, pooled.transaction():
            conn = cast(asyncpg.Connection, pooled)
            # Before the row beside it is written: an append announces itself before its
            # transaction has an id (eventlog.sealer, "the horizon").
            await self.store.begin_append(conn)
            await beside(conn)
            result = await self.store.append(
                stream_id,
                version,
                events,
                metadata,
                event_ids=event_ids_for(id_seed, len(events)) if id_seed else None,
                conn=conn,
            )
        self.store.committed(result)
        self.forget(stream_id)
        return Outcome(events, decider.fold(events, state), result.stream_version, result)

    async def pseudonymous(self, command: C) -> C:
        """``command`` with its actor as a subject id, mapped before anything is decided:
        rules compare who acted by stable ids, and recorded bytes never hold the name. A
        model's owner left at its default (the actor) is the actor's subject id too."""
        if self.subjects is None:
            return command
        subject, aliases = await self.subjects.pseudonymous(command.actor)
        changes: dict[str, Any] = {"actor": subject}
        if "actor_aliases" in command.__struct_fields__:
            changes["actor_aliases"] = (*getattr(command, "actor_aliases", ()), *aliases)
        if getattr(command, "owner", None) == command.actor:
            changes["owner"] = subject
        comment = getattr(command, "comment", None)
        if self.subjects.erasable_comments and isinstance(comment, str) and comment.strip():
            # The text is checked as the decider would (a blank one is left for it to
            # refuse where a comment is required), then kept beside the log: the
            # event holds a reference that commits to it (MODELREG_ERASABLE_COMMENTS).
            validate_comment(comment)
            changes["comment"] = await self.subjects.keep_comment(subject, comment)
        return msgspec.structs.replace(command, **changes)

    def _remember(self, stream_id: str, version: int, state: Any) -> None:
        cached = self._cache.get(stream_id)
        if cached is not None and cached[0] > version:
            return  # a concurrent command already cached a newer state
        self._cache[stream_id] = (version, state)
        self._cache.move_to_end(stream_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def _from_snapshot(self, stream_id: str, decider: Decider[S, Any, Any]) -> tuple[int, S]:
        if decider.state_type is not None:
            row = await self.store.pool.fetchrow(
                "SELECT version, state FROM snapshots WHERE stream_id = $1 AND snapshot_version = $2",
                stream_id,
                decider.snapshot_version,
            )
            if row is not None:
                try:
                    state = msgspec.json.decode(row["state"], type=decider.state_type)
                except msgspec.ValidationError:
                    log.warning(
                        "snapshot of %s no longer decodes; folding from the start", stream_id
                    )
                else:
                    self._weighed(stream_id, row["version"], len(row["state"]))
                    return row["version"], state
        return 0, decider.initial_state()

    def _snapshot_due(self, stream_id: str, before: int, after: int) -> bool:
        """Whether the stream, moved from version ``before`` to ``after``, is due a snapshot:
        its gap is behind its last one, or (none known) a multiple of ``snapshot_every``
        was crossed."""
        last = self._snapshots.get(stream_id)
        if last is None:
            return after // self.snapshot_every > before // self.snapshot_every
        version, gap = last
        return after - version >= gap

    def _weighed(self, stream_id: str, version: int, size: int | None = None) -> None:
        """Note a snapshot of the stream at ``version``, of ``size`` encoded bytes (None:
        not encoded yet, the gap stays as it was)."""
        last = self._snapshots.get(stream_id)
        if last is not None and last[0] > version:
            return  # a newer snapshot was noted first
        self._snapshots.pop(stream_id, None)
        gap = self.snapshot_every if last is None else last[1]
        if size is not None:
            gap = max(self.snapshot_every, size // self.snapshot_bytes_per_event)
        self._snapshots[stream_id] = (version, gap)  # newest last: the oldest goes first
        if len(self._snapshots) > self.cache_size:
            del self._snapshots[next(iter(self._snapshots))]

    def _snapshot_later(
        self, stream_id: str, version: int, state: Any, decider: Decider[Any, Any, Any]
    ) -> None:
        if decider.state_type is None:
            return
        self._weighed(stream_id, version)  # the next command must not find it due again
        task = asyncio.get_running_loop().create_task(
            self._snapshot(stream_id, version, state, decider)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _snapshot(
        self, stream_id: str, version: int, state: Any, decider: Decider[Any, Any, Any]
    ) -> None:
        try:
            encoded = msgspec.json.encode(state)
            self._weighed(stream_id, version, len(encoded))
            await self.store.pool.execute(
                "INSERT INTO snapshots (stream_id, version, snapshot_version, state) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version,"
                " snapshot_version = excluded.snapshot_version, state = excluded.state, taken_at = now()"
                " WHERE snapshots.version < excluded.version OR snapshots.snapshot_version <> excluded.snapshot_version",
                stream_id,
                version,
                decider.snapshot_version,
                encoded,
            )
        except Exception:  # a snapshot is only a cache: log, never fail a command over it
            log.exception("snapshot of %s at %d failed", stream_id, version)

    async def drain(self) -> None:
        """Wait for pending snapshot writes (shutdown, tests)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _check_precondition(stream_id: str, version: int, if_version: int | None) -> None:
    """``If-Match``: the caller decided against ``if_version``; any other version is a 412."""
    if if_version is not None and version != if_version:
        raise PreconditionFailedError(
            f"{stream_id} is at version {version}, not {if_version}",
            stream_id=stream_id,
            expected_version=if_version,
            actual_version=version,
        )


@dataclass(slots=True)
class _Group:
    """What a group of queued commands decided on one state: each command's answer (its
    outcome still without its append, or its refusal), the parts to append and the keys
    they move, the version and state after them, and the commands left for the next turn."""

    answers: list[tuple[_Queued, Outcome[Any, Any] | BaseException]]
    parts: list[AppendPart]
    claim: list[str]
    release: list[str]
    version: int
    state: Any
    rest: list[_Queued]

    def answer_all(self, appended: Iterator[AppendResult]) -> None:
        """Answer every command; those that recorded events take the next append result."""
        for queued, answer in self.answers:
            if isinstance(answer, BaseException):
                _answer(queued, exception=answer)
            elif answer.events:
                _answer(
                    queued, Outcome(answer.events, answer.state, answer.version, next(appended))
                )
            else:
                _answer(queued, answer)


def _decide_group(
    group: list[_Queued], decider: Decider[Any, Any, Any], version: int, state: Any
) -> _Group:
    decided = _Group([], [], [], [], version, state, [])
    for index, queued in enumerate(group):
        try:
            events = list(queued.decider.decide(queued.command, decided.state))
        except Exception as exc:  # noqa: BLE001 a refusal: this command's alone
            decided.answers.append((queued, exc))
            continue
        if not events:
            decided.answers.append((queued, Outcome([], decided.state, decided.version, None)))
            continue
        claims, releases = queued.keys(events, decided.state) if queued.keys else ((), ())
        if (claims or releases) and decided.parts:
            # Keys are claimed and released in one pass of the append, not in command
            # order: a command that moves a key starts the next turn.
            decided.rest = group[index:]
            return decided
        decided.claim += claims
        decided.release += releases
        decided.state = decider.fold(events, decided.state)
        decided.version += len(events)
        decided.parts.append(
            AppendPart(
                events,
                queued.metadata,
                event_ids_for(queued.id_seed, len(events)) if queued.id_seed else None,
            )
        )
        decided.answers.append((queued, Outcome(events, decided.state, decided.version, None)))
        if claims or releases:
            decided.rest = group[index + 1 :]
            return decided
    return decided


def _next_group(queue: deque[_Queued], most: int) -> list[_Queued]:
    """Take the next group off the front of ``queue``: up to ``most`` commands under the
    same guards (one append holds one set: the same registry policy revision, as a rule),
    stopping before a second copy of one request (it is answered next turn, as a retry)."""
    group: list[_Queued] = []
    seeds: set[str] = set()
    while queue and len(group) < most:
        head = queue[0]
        if group and (head.guards != group[0].guards or not seeds.isdisjoint(head.seeds())):
            break
        queue.popleft()
        seeds.update(head.seeds())
        if not head.answer.done():  # its caller went away before its turn
            group.append(head)
    return group


def _seeds(previous_seed: str | None, id_seed: str | None) -> list[str]:
    """The seeds a command's earlier copies may be recorded under, the older first."""
    return [s for s in (previous_seed, id_seed) if s is not None]


def _tried(group: list[_Queued], left: list[_Queued]) -> list[_Queued]:
    """The commands of ``group`` a failed turn was executing (not those it deferred)."""
    deferred = {id(q) for q in left}
    return [q for q in group if id(q) not in deferred]


def _answer(
    queued: _Queued,
    outcome: Outcome[Any, Any] | None = None,
    exception: BaseException | None = None,
) -> None:
    """Give a queued command its answer, unless its caller stopped waiting for it."""
    if queued.answer.done():
        return
    if exception is not None:
        queued.answer.set_exception(exception)
    elif outcome is not None:
        queued.answer.set_result(outcome)
