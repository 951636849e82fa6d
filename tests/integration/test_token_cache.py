"""Tokens answered from memory, against real Postgres: the cache is used only while its LISTEN
hears of every token change, so revocation and expiry still take effect in every process."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from eventlog.db import connect, create_pool
from eventlog.listener import Listener
from eventlog.store import EventStore
from events.access import Role
from events.access_grants import (
    CreateServiceAccount,
    DisableServiceAccount,
    GiveGrant,
    SubjectKind,
    WithdrawGrant,
)
from events.catalogue import CODEC
from service.commands import access
from service.commands.executor import CommandExecutor
from service.commands.token_secrets import Pepper
from service.commands.tokens import (
    InvalidTokenError,
    TokenAuthenticator,
    issue_token,
    revoke_token,
)
from tests.support.api import running_api
from tests.support.database import Database
from tests.support.waiting import eventually

PEPPER = Pepper.generate()


@dataclass
class Process:
    """What one API process holds: its own pool, executor and authenticator with a LISTEN."""

    auth: TokenAuthenticator
    listener: Listener
    name: str  # application name of its LISTEN connection


@contextlib.asynccontextmanager
async def api_process(db: Database) -> AsyncIterator[Process]:
    pool = await create_pool(db.url, schema=db.schema, app_role=db.app_role, min_size=1)
    name = f"tokens-{secrets.token_hex(4)}"

    async def connect_listener() -> asyncpg.Connection:
        return await connect(db.url, schema=db.schema, app_role=db.app_role, name=name)

    executor = CommandExecutor(EventStore(pool, CODEC))
    auth = TokenAuthenticator(executor.store, executor, PEPPER)
    listener = auth.listen(connect_listener, db.schema)
    task = asyncio.create_task(listener.run())
    try:
        await eventually(lambda: listener.listening, what="the token LISTEN is up")
        yield Process(auth, listener, f"{name}-listen")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await listener.close()
        await pool.close()


@pytest.fixture
def writer(db: Database) -> CommandExecutor:
    """Another process (the CLI, or another API replica) that issues and revokes tokens."""
    return CommandExecutor(EventStore(db.pool, CODEC))


async def issue(writer: CommandExecutor, *, expires_at: datetime | None = None) -> tuple[str, str]:
    outcome, secret = await issue_token(
        writer,
        PEPPER,
        actor="root",
        principal="bob",
        roles=[Role.READER],
        expires_at=expires_at,
    )
    return outcome.state.token_id, secret


async def refuses(auth: TokenAuthenticator, secret: str, reason: str) -> bool:
    try:
        await auth.authenticate(secret)
    except InvalidTokenError as exc:
        return reason in str(exc)
    return False


async def test_a_checked_token_is_answered_from_memory_while_listening(
    db: Database, writer: CommandExecutor
) -> None:
    # given a process listening for token changes, and a live token
    _, secret = await issue(writer)
    async with api_process(db) as b:
        # when the token is checked once
        principal = await b.auth.authenticate(secret)
        # then the process remembers it, and answers it as the same principal
        assert b.auth.remembers(secret)
        assert await b.auth.authenticate(secret) == principal


async def test_a_revocation_elsewhere_is_refused_once_the_notify_arrives(
    db: Database, writer: CommandExecutor
) -> None:
    # given process B remembers a token
    token_id, secret = await issue(writer)
    async with api_process(db) as b:
        await b.auth.authenticate(secret)
        assert b.auth.remembers(secret)
        # when another process (with no authenticator of its own) revokes it: the NOTIFY
        # comes from the database's trigger, not from the writer
        await revoke_token(writer, token_id, actor="root", reason="left")
        # then B forgets it and refuses it, and keeps refusing it
        await eventually(lambda: not b.auth.remembers(secret), what="B forgot the token")
        assert await refuses(b.auth, secret, "revoked")
        assert await refuses(b.auth, secret, "revoked")
        assert not b.auth.remembers(secret)


async def test_an_expired_token_is_refused_though_remembered(
    db: Database, writer: CommandExecutor
) -> None:
    # given a token valid for five minutes, remembered by a process
    now = datetime.now(UTC)
    _, secret = await issue(writer, expires_at=now + timedelta(minutes=5))
    clock = [now]
    async with api_process(db) as b:
        b.auth.clock = lambda: clock[0]
        await b.auth.authenticate(secret)
        assert b.auth.remembers(secret)
        # when its expiry passes, with no event at all
        clock[0] = now + timedelta(minutes=6)
        # then the remembered token is refused
        assert await refuses(b.auth, secret, "expired")


async def test_a_refused_secret_is_never_remembered(db: Database, writer: CommandExecutor) -> None:
    # given a revoked token and a secret that was never issued
    token_id, revoked = await issue(writer)
    await revoke_token(writer, token_id, actor="root")
    async with api_process(db) as b:
        # when each is presented twice
        for secret in (revoked, "mr_" + secrets.token_urlsafe(32)):
            for _ in range(2):
                with pytest.raises(InvalidTokenError):
                    await b.auth.authenticate(secret)
            # then neither is kept in memory
            assert not b.auth.remembers(secret)


async def test_without_its_listen_the_cache_is_dropped_and_bypassed(
    db: Database, writer: CommandExecutor
) -> None:
    # given process B remembers a token
    token_id, secret = await issue(writer)
    async with api_process(db) as b:
        await b.auth.authenticate(secret)
        assert b.auth.remembers(secret)
        # when its LISTEN connection is killed by the server
        assert await db.terminate_sessions(b.name) == 1
        await eventually(lambda: not b.listener.listening, what="B noticed the lost LISTEN")
        # then B remembers nothing, and a revocation made meanwhile (whose NOTIFY nobody
        # hears) is refused on the very next request
        assert not b.auth.remembers(secret)
        await revoke_token(writer, token_id, actor="root")
        assert await refuses(b.auth, secret, "revoked")


async def test_after_the_listen_returns_the_cache_is_used_again_and_starts_empty(
    db: Database, writer: CommandExecutor
) -> None:
    # given process B lost its LISTEN while a token was remembered
    token_id, secret = await issue(writer)
    async with api_process(db) as b:
        await b.auth.authenticate(secret)
        admin = await db.admin()
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            b.name,
        )
        await eventually(lambda: not b.listener.listening, what="B noticed the lost LISTEN")
        # when the LISTEN is back (the listener reconnects by itself)
        await eventually(lambda: b.listener.listening, what="B listens again")
        # then B starts from nothing, remembers again, and hears the next revocation
        assert not b.auth.remembers(secret)
        await b.auth.authenticate(secret)
        assert b.auth.remembers(secret)
        await revoke_token(writer, token_id, actor="root")
        await eventually(lambda: refuses(b.auth, secret, "revoked"), what="B refuses the token")


async def test_revoking_through_the_api_is_refused_by_that_process_at_once(db: Database) -> None:
    # given a registry whose authentication listens for token changes, and a reader's
    # token it has already answered from memory
    async with running_api(db) as api:
        tokens = api.services.auth.tokens
        listener = tokens.listen(db.connect, db.schema)
        task = asyncio.create_task(listener.run())
        try:
            await eventually(lambda: listener.listening, what="the token LISTEN is up")
            secret = await api.token("dora", Role.READER)

            async def answered_and_remembered() -> bool:
                # The NOTIFY of the token's own issue may arrive during the first look-up,
                # which is then not kept: ask again until it is.
                answered = await api.get("/api/v1/me", as_=secret)
                return answered.status_code == 200 and tokens.remembers(secret)

            await eventually(answered_and_remembered, what="the token is remembered")
            token_id = (await api.get("/api/v1/me", as_=secret)).json()["token_id"]
            # when the admin revokes it through the API
            revoked = await api.delete(f"/api/v1/tokens/{token_id}")
            assert revoked.status_code == 200
            # then the very next request with it is refused, with no wait
            refused = await api.get("/api/v1/me", as_=secret)
            assert refused.status_code == 401
            assert "revoked" in refused.text
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await listener.close()


async def test_a_grant_withdrawn_elsewhere_is_gone_once_the_notify_arrives(
    db: Database, writer: CommandExecutor
) -> None:
    # given process B answers bob's token from memory, with a grant given by another process
    _, secret = await issue(writer)
    given = await access.run(
        writer,
        GiveGrant(
            actor="root",
            now=datetime.now(UTC),
            grant_id="g1",
            subject_kind=SubjectKind.PRINCIPAL,
            subject="bob",
            role="contributor",
            pattern="fraud*",
        ),
    )
    assert given.events
    async with api_process(db) as b:
        assert (await b.auth.authenticate(secret)).grants
        assert b.auth.remembers(secret)
        # when the other process withdraws it (the NOTIFY comes from the trigger, 0010)
        await access.run(writer, WithdrawGrant(actor="root", now=datetime.now(UTC), grant_id="g1"))
        # then B forgets what it kept, and bob holds his token's rights only
        await eventually(lambda: not b.auth.remembers(secret), what="B forgot the token")
        assert (await b.auth.authenticate(secret)).grants == ()


async def test_a_service_account_disabled_elsewhere_stops_its_remembered_token(
    db: Database, writer: CommandExecutor
) -> None:
    # given a service account's token that process B remembers
    now = datetime.now(UTC)
    await access.run(
        writer, CreateServiceAccount(actor="root", now=now, name="ci-bot", roles=(Role.READER,))
    )
    _, secret = await issue_token(
        writer,
        PEPPER,
        actor="root",
        principal="ci-bot",
        roles=[Role.READER],
        expires_at=now + timedelta(days=1),
    )
    async with api_process(db) as b:
        await b.auth.authenticate(secret)
        assert b.auth.remembers(secret)
        # when another process disables the account
        await access.run(writer, DisableServiceAccount(actor="root", now=now, name="ci-bot"))
        # then B refuses the token once the NOTIFY arrives
        await eventually(lambda: not b.auth.remembers(secret), what="B forgot the token")
        assert await refuses(b.auth, secret, "disabled")
