"""Tokens against a real store: lookup by secret, revocation and expiry take effect at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from eventlog.store import EventStore
from events.access import TOKEN_EVENT_TYPES, TOKEN_UPCASTERS, Permission, Role
from events.codec import EventCodec
from events.errors import AlreadyExistsError
from service.commands.executor import CommandExecutor
from service.commands.token_secrets import Pepper
from service.commands.tokens import (
    InvalidTokenError,
    TokenAuthenticator,
    ensure_bootstrap_token,
    issue_token,
    revoke_token,
)
from tests.support.database import Database

PEPPER = Pepper.generate()


@pytest.fixture
def executor(db: Database) -> CommandExecutor:
    return CommandExecutor(EventStore(db.pool, EventCodec(TOKEN_EVENT_TYPES, TOKEN_UPCASTERS)))


async def test_a_secret_authenticates_as_its_principal(
    db: Database, executor: CommandExecutor
) -> None:
    _, secret = await issue_token(
        executor, PEPPER, actor="root", principal="alice", roles=[Role.APPROVER], scopes=["churn*"]
    )
    auth = TokenAuthenticator(executor.store, executor, PEPPER)
    principal = await auth.authenticate(secret)
    assert (principal.name, principal.roles, principal.scopes) == (
        "alice",
        (Role.APPROVER,),
        ("churn*",),
    )
    assert principal.permissions == {Permission.READ, Permission.APPROVE}


async def test_an_unknown_secret_is_refused(executor: CommandExecutor) -> None:
    with pytest.raises(InvalidTokenError, match="unknown"):
        await TokenAuthenticator(executor.store, executor, PEPPER).authenticate("mr_nope")


async def test_a_revocation_applies_to_the_very_next_request(executor: CommandExecutor) -> None:
    outcome, secret = await issue_token(
        executor, PEPPER, actor="root", principal="bob", roles=[Role.READER]
    )
    auth = TokenAuthenticator(executor.store, executor, PEPPER)
    await auth.authenticate(secret)  # now cached
    await revoke_token(
        CommandExecutor(executor.store), outcome.state.token_id, actor="root", reason="left"
    )
    with pytest.raises(InvalidTokenError, match="revoked"):
        await auth.authenticate(secret)


async def test_an_expired_token_is_refused(executor: CommandExecutor) -> None:
    now = datetime.now(UTC)
    _, secret = await issue_token(
        executor,
        PEPPER,
        actor="root",
        principal="carol",
        roles=[Role.READER],
        expires_at=now + timedelta(minutes=5),
    )
    later = TokenAuthenticator(
        executor.store, executor, PEPPER, clock=lambda: now + timedelta(minutes=6)
    )
    with pytest.raises(InvalidTokenError, match="expired"):
        await later.authenticate(secret)


async def test_two_tokens_cannot_share_a_secret(executor: CommandExecutor) -> None:
    await issue_token(
        executor,
        PEPPER,
        actor="root",
        principal="a",
        roles=[Role.READER],
        secret="same-secret-0123456789",
    )
    with pytest.raises(AlreadyExistsError):
        await issue_token(
            executor,
            PEPPER,
            actor="root",
            principal="b",
            roles=[Role.READER],
            secret="same-secret-0123456789",
        )


async def test_the_bootstrap_token_is_created_once(executor: CommandExecutor) -> None:
    first = await ensure_bootstrap_token(executor, PEPPER, None)
    assert first is not None
    assert first.startswith("mr_")
    assert await ensure_bootstrap_token(executor, PEPPER, None) is None
    principal = await TokenAuthenticator(executor.store, executor, PEPPER).authenticate(first)
    assert principal.roles == (Role.ADMIN,)


async def test_a_configured_bootstrap_secret_is_used_and_must_be_long_enough(
    executor: CommandExecutor,
) -> None:
    with pytest.raises(ValueError, match="16 characters"):
        await ensure_bootstrap_token(executor, PEPPER, "short")
    assert (
        await ensure_bootstrap_token(executor, PEPPER, "a-long-enough-bootstrap-secret")
        == "a-long-enough-bootstrap-secret"
    )
