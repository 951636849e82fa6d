"""The shared lead/stand-by loop: one leader per role, takeover when its session dies,
stand-by while another holds the role, a prompt stop, reconnection. Real Postgres; the
sessions are killed with pg_terminate_backend, as an operator or a crash would."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import pytest

from eventlog.db import lock_key
from eventlog.leadership import Leadership, Term, give_up, try_hold
from tests.support.cluster import lock_holders
from tests.support.database import Database
from tests.support.waiting import eventually

STANDBY = 0.05


class MovedError(RuntimeError):
    """Stands in for a role's "another instance moved the checkpoint" signal."""


@dataclass
class Competitor:
    """One instance competing for the role, with everything a test needs to watch it."""

    name: str
    leadership: Leadership
    connections: list[asyncpg.Connection] = field(default_factory=list)
    terms: list[Term] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @property
    def leads(self) -> bool:
        return self.leadership.is_leader

    async def lead(self, term: Term) -> None:
        self.terms.append(term)
        await term.ended.wait()


class Arena:
    """Starts competitors for one role in a test's schema and stops them all at the end."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.key = lock_key(db.schema, "test-role")
        self.stop = asyncio.Event()
        self.competitors: list[Competitor] = []

    def competitor(
        self,
        name: str,
        *,
        standby_interval: float = STANDBY,
        connect: Callable[[], Awaitable[asyncpg.Connection]] | None = None,
        lead: Callable[[Term], Awaitable[None]] | None = None,
    ) -> Competitor:
        application_name = f"{name}-{self.db.schema}"

        async def named() -> asyncpg.Connection:
            conn = await (connect or (lambda: self.db.connect(application_name)))()
            competitor.connections.append(conn)
            return conn

        competitor = Competitor(
            application_name,
            Leadership(
                named,
                self.key,
                role=name,
                standby_interval=standby_interval,
                stand_down_on=(MovedError,),
            ),
        )
        competitor.task = asyncio.create_task(
            competitor.leadership.run(lead or competitor.lead, self.stop)
        )
        self.competitors.append(competitor)
        return competitor

    async def kill(self, competitor: Competitor) -> int:
        admin = await self.db.admin()
        killed: int = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            competitor.name,
        )
        return killed

    async def holder(self) -> str | None:
        held = await lock_holders(await self.db.admin(), [self.key])
        return held[self.key].application_name if self.key in held else None

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(
            *(c.task for c in self.competitors if c.task is not None), return_exceptions=True
        )


@pytest.fixture
async def arena(db: Database) -> AsyncIterator[Arena]:
    arena = Arena(db)
    try:
        yield arena
    finally:
        await arena.close()


def stood_by(competitor: Competitor) -> bool:
    """It has competed and gone back to waiting at least once (its first session is closed)."""
    return bool(competitor.connections) and competitor.connections[0].is_closed()


async def test_one_competitor_leads_and_the_other_stands_by(arena: Arena) -> None:
    # given two competitors for one role
    first = arena.competitor("first")
    await eventually(lambda: first.leads, what="first leads")
    second = arena.competitor("second")

    # when the second has competed and stood by at least once
    await eventually(lambda: stood_by(second), what="second stood by")

    # then only the first leads, holding the advisory lock on the role's key
    assert first.leads and not second.leads
    assert second.terms == []
    assert await arena.holder() == first.name


async def test_a_standby_takes_over_when_the_leaders_session_is_killed(arena: Arena) -> None:
    # given a leader (which, having lost the role, waits an hour before competing again)
    # and a standby
    first = arena.competitor("first", standby_interval=3600)
    await eventually(lambda: first.leads, what="first leads")
    second = arena.competitor("second")
    await eventually(lambda: stood_by(second), what="second stood by")

    # when the leader's session is killed
    assert await arena.kill(first) == 1

    # then the leader's term ends and the standby takes the role
    await eventually(lambda: second.leads, what="second leads")
    assert first.terms[0].ended.is_set()
    assert await arena.holder() == second.name
    assert not first.leads


async def test_a_role_held_elsewhere_keeps_it_standing_by_until_given_up(
    arena: Arena, db: Database
) -> None:
    # given the role taken the way the CLI's rebuild takes a projection's role
    cli = await db.connect()
    assert await try_hold(cli, arena.key)
    worker = arena.competitor("worker")

    # when the worker has competed and stood by
    await eventually(lambda: stood_by(worker), what="worker stood by")
    assert not worker.leads and worker.terms == []

    # then it leads once the role is given up, and others cannot take it meanwhile
    await give_up(cli, arena.key)
    await eventually(lambda: worker.leads, what="worker leads")
    assert not await try_hold(cli, arena.key)


async def test_stop_while_standing_by_returns_without_leading(arena: Arena, db: Database) -> None:
    # given a standby that would wait an hour before competing again
    holder = await db.connect()
    assert await try_hold(holder, arena.key)
    standby = arena.competitor("standby", standby_interval=3600)
    await eventually(lambda: stood_by(standby), what="standby stood by")

    # when it is stopped
    arena.stop.set()

    # then it returns at once, having never led
    assert standby.task is not None
    await asyncio.wait_for(standby.task, timeout=60)
    assert standby.terms == []


async def test_stop_while_leading_ends_the_term_and_frees_the_role(
    arena: Arena, db: Database
) -> None:
    # given a leader
    leader = arena.competitor("leader", standby_interval=3600)
    await eventually(lambda: leader.leads, what="leader leads")

    # when it is stopped
    arena.stop.set()
    assert leader.task is not None
    await asyncio.wait_for(leader.task, timeout=60)

    # then its term ended, it no longer leads and the role is free
    assert leader.terms[0].ended.is_set()
    assert not leader.leads
    assert await try_hold(await db.connect(), arena.key)


async def test_it_reconnects_after_a_failed_connection(arena: Arena, db: Database) -> None:
    # given a database that refuses the first connection
    refused: list[OSError] = []

    async def connect() -> asyncpg.Connection:
        if not refused:
            try:
                await asyncpg.connect(host="127.0.0.1", port=_closed_port(), timeout=5)
            except OSError as exc:
                refused.append(exc)
                raise
        return await db.connect("flaky")

    # when a competitor starts
    competitor = arena.competitor("flaky", connect=connect)

    # then it tries again and leads
    await eventually(lambda: competitor.leads, what="leads after the refusal")
    assert len(refused) == 1


async def test_it_competes_again_after_losing_its_session(arena: Arena) -> None:
    # given the only competitor, leading
    only = arena.competitor("only")
    await eventually(lambda: only.leads, what="leads")

    # when its session is killed
    assert await arena.kill(only) == 1

    # then its term ends and it leads again on a new session
    await eventually(lambda: len(only.terms) == 2 and only.leads, what="leads again")
    assert only.terms[0].ended.is_set() and not only.terms[1].ended.is_set()
    assert only.terms[0].conn is not only.terms[1].conn


async def test_a_stand_down_error_frees_the_role_for_a_standby(arena: Arena) -> None:
    # given a leader whose first term ends in "another instance moved the checkpoint"
    moved = asyncio.Event()
    terms: list[Term] = []

    async def lead(term: Term) -> None:
        terms.append(term)
        if len(terms) == 1:
            await moved.wait()
            raise MovedError("checkpoint moved")
        await term.ended.wait()

    # (it waits an hour before competing again, so the standby is the one to take over)
    failing = arena.competitor("failing", lead=lead, standby_interval=3600)
    await eventually(lambda: failing.leads, what="failing leads")
    standby = arena.competitor("standby")
    await eventually(lambda: stood_by(standby), what="standby stood by")

    # when the leader's role signals that someone else moved on
    moved.set()

    # then it stands down without ending its run, and the standby takes the role
    await eventually(lambda: standby.leads, what="standby leads")
    assert failing.task is not None and not failing.task.done()
    assert not failing.leads and len(terms) == 1


async def test_any_other_error_ends_the_run_and_frees_the_role(arena: Arena, db: Database) -> None:
    # given a role that fails in a way the loop does not know
    async def lead(term: Term) -> None:
        raise ValueError("a bug in the role")

    broken = arena.competitor("broken", lead=lead)

    # when it leads, then its run ends with that error, and the role is free
    assert broken.task is not None
    with pytest.raises(ValueError, match="a bug in the role"):
        await asyncio.wait_for(broken.task, timeout=60)
    assert not broken.leads
    assert await try_hold(await db.connect(), arena.key)


def _closed_port() -> int:
    """A local TCP port nobody listens on: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
