"""Token secrets stay out of the log (issue 13, items 5 and 11), against a real Postgres:
no event holds the secret or a digest of it, a dump without the pepper cannot check a
guess, tokens from before 0.3 keep working until rotated, and the last admin stays."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import stat
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import ClassVar

import pytest

from eventlog.store import EventStore, Metadata
from events.access import TOKEN_EVENT_TYPES, TOKEN_UPCASTERS, Role
from events.base import Event
from events.codec import EventCodec
from service.commands.executor import CommandExecutor
from service.commands.token_secrets import (
    PEPPER_FILE,
    Pepper,
    PepperError,
    check_pepper,
    load_pepper,
)
from service.commands.tokens import (
    InvalidTokenError,
    LastAdminError,
    TokenAuthenticator,
    active_admin_ids,
    ensure_bootstrap_token,
    issue_token,
    revoke_token,
    warn_legacy_tokens,
)
from tests.support.database import Database

PEPPER = Pepper.generate()


def executor_on(db: Database) -> CommandExecutor:
    return CommandExecutor(EventStore(db.pool, EventCodec(TOKEN_EVENT_TYPES, TOKEN_UPCASTERS)))


@pytest.fixture
def executor(db: Database) -> CommandExecutor:
    return executor_on(db)


async def dump(db: Database) -> str:
    """Every row of every table of the registry's schema, as text: what a stolen backup holds."""
    owner = await db.admin()
    tables = await owner.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", db.schema
    )
    rows = []
    for t in tables:
        name = t["table_name"]
        rows += [r[0] for r in await owner.fetch(f'SELECT t::text FROM "{name}" t')]
        rows += (
            [
                bytes(r[0]).decode("utf-8", "replace")
                for r in await owner.fetch(f'SELECT envelope FROM "{name}"')
            ]
            if name == "events"
            else []
        )
    return "\n".join(rows)


async def test_no_event_holds_the_secret_or_any_digest_of_it_and_the_token_works(
    db: Database, executor: CommandExecutor
) -> None:
    # given a token issued with a secret an operator chose (the kind that can be guessed)
    secret = "operator-chosen-bootstrap-secret"
    await issue_token(
        executor, PEPPER, actor="root", principal="ops", roles=[Role.ADMIN], secret=secret
    )
    # when the recorded events are read, as an auditor (or a NATS consumer) reads them
    events = "".join(
        bytes(r["envelope"]).decode() for r in await db.pool.fetch("SELECT envelope FROM events")
    )
    # then none holds the secret, its SHA-256 or its keyed digest; the token authenticates
    assert "token.issued" in events
    for needle in (
        secret,
        hashlib.sha256(secret.encode()).hexdigest(),
        PEPPER.digest(secret).hex(),
    ):
        assert needle not in events
    principal = await TokenAuthenticator(executor.store, executor, PEPPER).authenticate(secret)
    assert principal.name == "ops"


async def test_a_database_dump_without_the_pepper_cannot_verify_a_secret(
    db: Database, executor: CommandExecutor
) -> None:
    # given a token and a dump of every table of the registry
    secret = "operator-chosen-bootstrap-secret"
    await issue_token(
        executor, PEPPER, actor="root", principal="ops", roles=[Role.ADMIN], secret=secret
    )
    stolen = await dump(db)
    # then the dump holds the secret's digest under the server pepper only: not the secret,
    # not its unkeyed SHA-256, not a digest under any other key
    assert PEPPER.digest(secret).hex() in stolen
    assert secret not in stolen
    assert hashlib.sha256(secret.encode()).hexdigest() not in stolen
    # and with any other pepper the right secret finds no token
    with pytest.raises(InvalidTokenError, match="unknown"):
        await TokenAuthenticator(executor.store, executor, Pepper.generate()).authenticate(secret)


class LegacyTokenIssued(Event, frozen=True, kw_only=True):
    """token.issued as 0.2 recorded it: with the unkeyed SHA-256 of the secret."""

    event_type: ClassVar[str] = "token.issued"
    token_id: str
    principal: str
    roles: tuple[Role, ...]
    scopes: tuple[str, ...]
    secret_sha256: str
    expires_at: datetime | None
    description: str


async def test_a_token_issued_before_0_3_keeps_working_until_it_is_rotated(
    db: Database, executor: CommandExecutor
) -> None:
    # given a token written exactly as 0.2 wrote it: a v1 event and its SHA-256 unique key
    secret = "mr_legacy-secret-from-an-old-registry"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    old_store = EventStore(db.pool, EventCodec([LegacyTokenIssued]))
    event = LegacyTokenIssued(
        token_id="old",
        principal="ci",
        roles=(Role.READER,),
        scopes=(),
        secret_sha256=digest,
        expires_at=None,
        description="",
    )
    await old_store.append(
        "token:old",
        0,
        [event],
        Metadata(actor="root", occurred_at=datetime.now().astimezone()),
        claim=[f"token-sha256:{digest}"],
    )
    auth = TokenAuthenticator(executor.store, executor, PEPPER)
    # when this version reads it: the token still authenticates, and start-up names it
    assert (await auth.authenticate(secret)).name == "ci"
    assert await warn_legacy_tokens(executor) == ["old"]
    # then once rotated (revoked) it is refused and no longer reported
    await revoke_token(executor, "old", actor="root", reason="rotated")
    with pytest.raises(InvalidTokenError, match="revoked"):
        await auth.authenticate(secret)
    assert await warn_legacy_tokens(executor) == []


async def test_the_last_active_admin_token_cannot_be_revoked(executor: CommandExecutor) -> None:
    # given one admin token, and an admin token narrowed to some models (not a registry admin)
    first, _ = await issue_token(executor, PEPPER, actor="root", principal="a", roles=[Role.ADMIN])
    await issue_token(
        executor, PEPPER, actor="root", principal="s", roles=[Role.ADMIN], scopes=["churn*"]
    )
    a = first.state.token_id
    # when it is revoked, then that is refused with a conflict naming the token
    with pytest.raises(LastAdminError, match="last active admin") as refused:
        await revoke_token(executor, a, actor="a")
    assert (refused.value.code, refused.value.details["token_id"]) == ("last_admin", a)
    # and with a second admin, the first can go, and then the second cannot
    second, _ = await issue_token(executor, PEPPER, actor="a", principal="b", roles=[Role.ADMIN])
    await revoke_token(executor, a, actor="b")
    with pytest.raises(LastAdminError):
        await revoke_token(executor, second.state.token_id, actor="b")


async def test_two_admins_revoking_each_other_at_once_leave_one(db: Database) -> None:
    # given two admin tokens and two replicas (executors of their own)
    executor = executor_on(db)
    one, _ = await issue_token(executor, PEPPER, actor="root", principal="a", roles=[Role.ADMIN])
    two, _ = await issue_token(executor, PEPPER, actor="root", principal="b", roles=[Role.ADMIN])
    ids = [one.state.token_id, two.state.token_id]
    # when each replica revokes one of them at the same time
    results = await asyncio.gather(
        revoke_token(executor_on(db), ids[0], actor="b"),
        revoke_token(executor_on(db), ids[1], actor="a"),
        return_exceptions=True,
    )
    # then exactly one revocation is refused, and one admin is left
    assert sorted(type(r).__name__ for r in results) == ["LastAdminError", "Outcome"]
    assert len(await active_admin_ids(executor, datetime.now().astimezone())) == 1


async def test_a_bootstrap_secret_set_on_a_bootstrapped_registry_is_reported(
    executor: CommandExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    # given a registry bootstrapped with a configured secret
    live = "the-live-bootstrap-secret"
    assert await ensure_bootstrap_token(executor, PEPPER, live) == live
    # when it starts again with the same secret, nothing is reported
    with caplog.at_level(logging.WARNING):
        assert await ensure_bootstrap_token(executor, PEPPER, live) is None
    assert not caplog.records
    # when it starts with another secret (e.g. to regain access), the variable is ignored
    # and a warning says so, and what to do instead
    with caplog.at_level(logging.WARNING):
        assert (
            await ensure_bootstrap_token(executor, PEPPER, "another-secret-to-regain-access")
            is None
        )
    [record] = caplog.records
    assert "MODELREG_BOOTSTRAP_TOKEN is set but ignored" in record.getMessage()
    assert "modelreg tokens create" in record.getMessage()


async def test_a_process_with_another_pepper_is_refused(db: Database) -> None:
    # given a registry whose tokens are digested under one pepper
    await check_pepper(db.pool, PEPPER)
    await check_pepper(db.pool, PEPPER)  # the same one again is fine
    # when a process starts with another, then it is refused with what to do
    with pytest.raises(PepperError, match="MODELREG_TOKEN_PEPPER"):
        await check_pepper(db.pool, Pepper.generate())


def test_the_pepper_file_is_created_private_and_reused(tmp_path: Path) -> None:
    # given an empty data dir: the first start creates the pepper file, readable by its owner only
    first = load_pepper(None, tmp_path / "data")
    path = tmp_path / "data" / PEPPER_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # a later start reads the same pepper
    assert load_pepper(None, tmp_path / "data").fingerprint == first.fingerprint
    # MODELREG_TOKEN_PEPPER wins over the file, and must be long enough
    assert load_pepper("x" * 32, tmp_path / "data").fingerprint != first.fingerprint
    with pytest.raises(PepperError, match="at least 32"):
        load_pepper("short", tmp_path / "data")
    # a pepper file others can read is refused
    path.chmod(0o640)
    with pytest.raises(PepperError, match="chmod 600"):
        load_pepper(None, tmp_path / "data")


def test_processes_starting_together_on_one_data_dir_share_one_pepper(tmp_path: Path) -> None:
    # given several processes (threads here) starting at once on an empty data dir
    with ThreadPoolExecutor(8) as pool:
        peppers = list(pool.map(lambda _: load_pepper(None, tmp_path / "data"), range(16)))
    # then they all read the one pepper that was written first, and left no scratch file
    assert len({p.fingerprint for p in peppers}) == 1
    assert [f.name for f in (tmp_path / "data").iterdir()] == [PEPPER_FILE]
