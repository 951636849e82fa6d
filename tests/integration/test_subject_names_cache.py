"""Names answered from memory, against real Postgres: a process keeps the names (and comment
texts) it has shown only while its LISTEN hears of every erasure (migration 0011), so an
erasure made in any process reads as erased in every other one at once."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from eventlog.db import connect, create_pool
from eventlog.listener import Listener
from eventlog.store import EventStore
from events.catalogue import CODEC
from service.commands.executor import CommandExecutor
from service.commands.subjects import erase_subject
from service.identity.subjects import ERASED, ERASED_COMMENT, SubjectDirectory
from tests.support.database import Database
from tests.support.waiting import eventually


@dataclass
class Process:
    """What one API process holds: its own pool, executor and directory with a LISTEN."""

    subjects: SubjectDirectory
    executor: CommandExecutor
    listener: Listener
    name: str  # application name of its LISTEN connection


@contextlib.asynccontextmanager
async def api_process(db: Database) -> AsyncIterator[Process]:
    pool = await create_pool(db.url, schema=db.schema, app_role=db.app_role, min_size=1)
    name = f"subjects-{secrets.token_hex(4)}"

    async def connect_listener() -> asyncpg.Connection:
        return await connect(db.url, schema=db.schema, app_role=db.app_role, name=name)

    subjects = SubjectDirectory(pool, erasable_comments=True)
    executor = CommandExecutor(EventStore(pool, CODEC), subjects=subjects)
    listener = subjects.listen(connect_listener, db.schema)
    task = asyncio.create_task(listener.run())
    try:
        await eventually(lambda: listener.listening, what="the subjects LISTEN is up")
        yield Process(subjects, executor, listener, f"{name}-listen")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await listener.close()
        await executor.drain()
        await pool.close()


async def erase(process: Process, who: str) -> None:
    """The erase command, as the API and the CLI run it."""
    await erase_subject(process.executor, who, actor="root", reason="asked", now=datetime.now(UTC))


async def erase_in_the_table(pool: asyncpg.Pool, subject_id: str) -> None:
    """An erasure by hand (an operator's UPDATE), with no process told of it."""
    await pool.execute(
        "UPDATE subjects SET principal = NULL, erased_at = now(), reason = 'by hand'"
        " WHERE subject_id = $1",
        subject_id,
    )


async def test_an_erasure_in_one_process_reads_as_erased_in_another_once_the_notify_arrives(
    db: Database,
) -> None:
    async with api_process(db) as a, api_process(db) as b:
        # given alice, with a kept comment, whose name and comment B answers from memory
        alice = await a.subjects.subject_for("alice")
        ref = await a.subjects.keep_comment(alice, "looks good to me")
        assert await b.subjects.names_of([alice]) == {alice: "alice"}
        assert await b.subjects.comments_of([ref]) == {ref: "looks good to me"}
        assert b.subjects.remembers(alice) and b.subjects.remembers(ref)
        heard = b.subjects.notices
        # when A erases her (the NOTIFY comes from the database's triggers, not from A)
        await erase(a, "alice")
        # then once B has heard the subject and the comment change, its very next answers
        # read as erased
        await eventually(lambda: b.subjects.notices >= heard + 2, what="B heard the erasure")
        assert not b.subjects.remembers(alice) and not b.subjects.remembers(ref)
        assert await b.subjects.names_of([alice]) == {alice: ERASED}
        assert await b.subjects.comments_of([ref]) == {ref: ERASED_COMMENT}
        # and A, which erased, reads her as erased at once
        assert await a.subjects.names_of([alice]) == {alice: ERASED}
        assert await a.subjects.comments_of([ref]) == {ref: ERASED_COMMENT}


async def test_names_shown_while_listening_are_kept_and_others_are_asked_again(
    db: Database,
) -> None:
    async with api_process(db) as b:
        # given bob, known, and an id nobody knows yet
        bob = await b.subjects.subject_for("bob")
        later = "subj_" + "a" * 26
        # when B shows both
        assert await b.subjects.names_of([bob, later]) == {bob: "bob"}
        # then it keeps bob's name, but not the unknown id: its row may be created later,
        # which sends no NOTIFY
        assert b.subjects.remembers(bob)
        assert not b.subjects.remembers(later)
        await db.pool.execute(
            "INSERT INTO subjects (subject_id, principal) VALUES ($1, 'carol')", later
        )
        assert await b.subjects.names_of([bob, later]) == {bob: "bob", later: "carol"}


async def test_without_a_listen_every_answer_asks_the_database(db: Database) -> None:
    # given a directory whose LISTEN was never set up, and one set up but not running
    set_up = SubjectDirectory(db.pool)
    set_up.listen(db.connect, db.schema)
    for subjects in (SubjectDirectory(db.pool), set_up):
        dora = await subjects.subject_for(f"dora-{secrets.token_hex(2)}")
        assert (await subjects.names_of([dora]))[dora].startswith("dora-")
        # then nothing is kept
        assert not subjects.remembers(dora)
        # when she is erased in the table by hand, telling no process
        await erase_in_the_table(db.pool, dora)
        # then the very next answer reads her as erased
        assert await subjects.names_of([dora]) == {dora: ERASED}


async def test_a_lost_listen_drops_every_name_and_the_returned_one_starts_empty(
    db: Database,
) -> None:
    async with api_process(db) as b:
        # given B answers erin from memory
        erin = await b.subjects.subject_for("erin")
        assert await b.subjects.names_of([erin]) == {erin: "erin"}
        assert b.subjects.remembers(erin)
        # when its LISTEN connection is killed by the server
        assert await db.terminate_sessions(b.name) == 1
        await eventually(lambda: not b.listener.listening, what="B noticed the lost LISTEN")
        # then B keeps nothing; an erasure while nobody listens (its NOTIFY unheard) reads
        # as erased at once, while the LISTEN is down or after it is back
        assert not b.subjects.remembers(erin)
        admin = await db.admin()
        await admin.execute("ALTER TABLE subjects DISABLE TRIGGER subjects_notify")
        await erase_in_the_table(db.pool, erin)
        await admin.execute("ALTER TABLE subjects ENABLE TRIGGER subjects_notify")
        await eventually(lambda: b.listener.listening, what="B listens again")
        assert not b.subjects.remembers(erin)
        assert await b.subjects.names_of([erin]) == {erin: ERASED}
        # and B keeps names again
        frank = await b.subjects.subject_for("frank")
        assert await b.subjects.names_of([frank]) == {frank: "frank"}
        assert b.subjects.remembers(frank)
