"""A round of the projection worker, and joint rounds: the live views of one worker
advanced together, in one transaction. I/O: Postgres.

Each seal wakes every leader of a worker, and each used to advance its live generation in
its own transaction: a read of the checkpoints and the head, BEGIN, the checkpoint's
compare-and-set, the view's writes, COMMIT. Under a steady stream of writes that was
seven transactions and some thirty-five statements per seal for a batch of a few events:
about half of the Postgres work of a write, and the worker's event loop switching between
seven tasks that each did a little.

A joint round does the same for every leader that asks at once: one read of every
checkpoint and the head, one read of the new events, and one transaction that moves every
checkpoint (compare-and-set, all or none) and applies each view its own events. What each
view ends with is what its own round would have written: the same events, the same
``apply``, the same checkpoint, in one transaction instead of seven.

What a round alone guarantees still holds:

- *Exactly once.* Every checkpoint moves by compare-and-set in the transaction that writes
  its view; if one of them moved (another worker applied that batch), the whole joint
  transaction rolls back and each leader runs its round alone, where the moved one finds
  its checkpoint moved and stands down as before.
- *One view's failure is its own.* If the joint round fails for any reason (a view's
  ``apply`` raises, the connection goes), nothing of it is kept and every leader runs its
  round alone, so only the failing view stops; joint rounds pause for ``PAUSE`` seconds
  so a view that keeps failing does not make every round run twice.
- *Fencing.* A leader writes only while it holds its role. The joint transaction runs on
  one leader's session; before it commits it checks that every leader it writes for still
  holds its session (a term whose session closed has ``ended`` set by the termination
  listener) and rolls back otherwise. A role lost in the instant between that check and
  the commit is covered by the checkpoint's compare-and-set: the new leader's first
  compare-and-set waits on the row this transaction locked and then finds it moved.
- *Rebuilds run apart.* A view with a generation being built, or whose live generation
  is of older code, runs its own round (the rebuild's batches and the switch), never a
  joint one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from eventlog.leadership import Term
from eventlog.log import LoggedEvent, read_log
from projections.base import Projection
from projections.tail import LogTail

log = logging.getLogger(__name__)


class CheckpointMovedError(RuntimeError):
    """Another worker moved the checkpoint first: this batch was rolled back."""


class RoleLostError(RuntimeError):
    """A leader of the joint round lost its role before the round committed."""


@dataclass(frozen=True, slots=True)
class Generation:
    projection: str
    generation: int
    code_version: int
    status: str
    log_position: int


@dataclass(frozen=True, slots=True)
class Progress:
    moved: int  # positions the generations moved
    caught_up: bool  # every generation reached the head this round read


# Every generation of the views asked for, and the head, in one round trip.
_STATES = (
    "SELECT projection, generation, code_version, status, log_position,"
    " (SELECT last_log_position FROM sealer_state WHERE id = 1) AS head"
    " FROM projection_checkpoints WHERE projection = ANY ($1::text[]) AND status <> 'retired'"
)

# Every live checkpoint moved by compare-and-set in one statement; the count says whether
# all of them were still where the round read them.
_MOVE_ALL = (
    "UPDATE projection_checkpoints c SET log_position = m.new, updated_at = statement_timestamp()"
    " FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[]) AS m(projection, generation, old, new)"
    " WHERE c.projection = m.projection AND c.generation = m.generation"
    " AND c.log_position = m.old AND c.status = 'live'"
)


@dataclass(frozen=True, slots=True)
class Member:
    """A view in a joint round, and the term of its leader."""

    projection: Projection
    term: Term


async def advance_live_together(
    conn: asyncpg.Connection,
    members: Sequence[Member],
    *,
    batch: int,
    tail: LogTail | None = None,
) -> dict[str, Progress]:
    """One round for the live generations of ``members`` in one transaction on ``conn``.
    Returns each advanced view's progress; a view absent from the answer (one with a
    rebuild under way, or live tables of older code) must run its own round."""
    names = [m.projection.name for m in members]
    head, joint = _live_of(await conn.fetch(_STATES, names), members)
    answers: dict[str, Progress] = {}
    if not joint:
        return answers
    start = min(live.log_position for _, live in joint)
    if start >= head:
        return {m.projection.name: Progress(0, True) for m, _ in joint}
    types = frozenset[str]().union(*(m.projection.handles for m, _ in joint))
    if tail is not None:
        events = await tail.read(conn, start, batch, up_to=head, types=types)
    else:
        events = await read_log(conn, start, batch, up_to=head, types=types)
    new_position = events[-1].log_position if len(events) == batch else head
    moving = [(m, live) for m, live in joint if live.log_position < new_position]
    for m, live in joint:
        if live.log_position >= new_position:  # ahead of this batch: nothing to do now
            answers[m.projection.name] = Progress(0, live.log_position >= head)
    async with conn.transaction():
        # The compare-and-sets go first: they lock the checkpoint rows, so a second
        # applier of the same batch waits here, then finds the positions moved.
        status = await conn.execute(
            _MOVE_ALL,
            [m.projection.name for m, _ in moving],
            [live.generation for _, live in moving],
            [live.log_position for _, live in moving],
            [new_position] * len(moving),
        )
        if status != f"UPDATE {len(moving)}":
            raise CheckpointMovedError(f"a checkpoint of {', '.join(names)} moved")
        for member, live in moving:
            projection = member.projection
            mine = _handled(events, projection.handles, after=live.log_position)
            if mine:
                await projection.apply(conn, projection.generation_names(live.generation), mine)
        lost = [m.projection.name for m, _ in moving if m.term.ended.is_set()]
        if lost:
            raise RoleLostError(f"lost the role of {', '.join(lost)}")
    caught_up = new_position == head
    for member, live in moving:
        answers[member.projection.name] = Progress(new_position - live.log_position, caught_up)
    return answers


def _live_of(
    rows: Sequence[asyncpg.Record], members: Sequence[Member]
) -> tuple[int, list[tuple[Member, Generation]]]:
    """The head, and the members whose only generation is live and of their code."""
    if not rows:
        return 0, []
    found: dict[str, list[Generation]] = {}
    for r in rows:
        found.setdefault(r["projection"], []).append(
            Generation(
                r["projection"], r["generation"], r["code_version"], r["status"], r["log_position"]
            )
        )
    joint = []
    for member in members:
        current = found.get(member.projection.name, [])
        live = current[0] if len(current) == 1 and current[0].status == "live" else None
        if live is not None and live.code_version >= member.projection.version:
            joint.append((member, live))
        # else: not set up yet, or a rebuild under way: its own round knows what to do
    return rows[0]["head"], joint


def _handled(
    events: Sequence[LoggedEvent], handles: frozenset[str], *, after: int
) -> list[LoggedEvent]:
    return [e for e in events if e.log_position > after and e.event_type in handles]


@dataclass(slots=True)
class _Asked:
    member: Member
    answer: asyncio.Future[Progress | None]


class JointRounds:
    """Gathers the leaders of one worker that ask for a round at the same moment (every
    seal wakes them all) and advances their live views in one joint round; each gets its
    own progress, or ``None``: run your own round."""

    # After a joint round failed, every leader runs its own rounds for this long.
    PAUSE = 5.0

    def __init__(self, *, batch: int, tail: LogTail | None, gather: float = 0.0) -> None:
        self.batch = batch
        self.tail = tail
        self.gather = gather
        self._asked: list[_Asked] = []
        self._driver: asyncio.Task[None] | None = None
        self._paused_until = 0.0
        self.joint = 0  # joint rounds that committed, for tests and curiosity

    async def advance(self, projection: Projection, term: Term) -> Progress | None:
        loop = asyncio.get_running_loop()
        if loop.time() < self._paused_until:
            return None
        asked = _Asked(Member(projection, term), loop.create_future())
        self._asked.append(asked)
        if self._driver is None:
            self._driver = loop.create_task(self._drive(), name="projections: joint rounds")
        return await asked.answer

    async def _drive(self) -> None:
        group: list[_Asked] = []
        try:
            # The leaders woken by the same seal ask within this wait, and under load more
            # seals land meanwhile, so one round carries them all.
            await asyncio.sleep(self.gather)
            while self._asked:
                group, self._asked = [a for a in self._asked if not a.answer.done()], []
                answers = await self._joint(group) if len(group) > 1 else {}
                for asked in group:
                    if not asked.answer.done():
                        asked.answer.set_result(answers.get(asked.member.projection.name))
                # The leaders just answered ask again at once if more was sealed meanwhile:
                # let them, so they join the leaders who asked during the round. Without
                # this the two halves took turns, each round carrying half the views.
                await asyncio.sleep(0)
        finally:
            self._driver = None
            for asked in (*group, *self._asked):
                if not asked.answer.done():
                    asked.answer.set_result(None)
            self._asked = []

    async def _joint(self, group: list[_Asked]) -> dict[str, Progress]:
        # The round runs on the first leader's session: its leader waits for the answer,
        # so nothing else uses that session meanwhile.
        conn = group[0].member.term.conn
        try:
            answers = await advance_live_together(
                conn, [a.member for a in group], batch=self.batch, tail=self.tail
            )
        except Exception as exc:  # noqa: BLE001 each leader's own round meets it, alone
            log.info("joint projection round failed (%s); each view runs its own", exc)
            self._paused_until = asyncio.get_running_loop().time() + self.PAUSE
            return {}
        self.joint += 1
        return answers
