"""``modelreg tokens create NAME --admin`` against a real Postgres schema: the way back in
when no admin token works, with no API and no token (issue 13, item 11)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from eventlog.store import EventStore
from events.access import Role
from events.access_grants import CreateServiceAccount
from events.catalogue import CODEC
from service.cli.tokens import app
from service.commands import access
from service.commands.executor import CommandExecutor
from service.commands.token_secrets import Pepper, check_pepper
from service.commands.tokens import (
    TokenAuthenticator,
    active_admin_ids,
    issue_token,
)
from tests.support.database import Database
from tests.support.subjects import named

PEPPER_TEXT = "the-servers-token-pepper-" + "x" * 16
PEPPER = Pepper(PEPPER_TEXT.encode())


async def tokens(db: Database, *args: str, **env: str) -> Result:
    """The command pointed at the test schema, in a thread: it runs its own event loop."""
    environment = {
        "MODELREG_DATABASE_URL": db.url,
        "MODELREG_DB_SCHEMA": db.schema,
        "MODELREG_DB_APP_ROLE": db.app_role,
        "MODELREG_TOKEN_PEPPER": PEPPER_TEXT,
        "MODELREG_URL": "http://127.0.0.1:9",  # no API: the command must not need one
        "MODELREG_TOKEN": "",
    } | env
    return await asyncio.to_thread(lambda: CliRunner().invoke(app, list(args), env=environment))


@pytest.fixture
async def locked_out(db: Database) -> CommandExecutor:
    """A registry whose only admin token has expired: no API call can mint another."""
    executor = CommandExecutor(EventStore(db.pool, CODEC))
    await check_pepper(db.pool, PEPPER)
    now = datetime.now(UTC)
    await issue_token(
        executor,
        PEPPER,
        actor="modelreg",
        principal="admin",
        roles=[Role.ADMIN],
        now=now - timedelta(hours=2),
        expires_at=now - timedelta(hours=1),
    )
    assert await active_admin_ids(executor, now) == []
    return executor


async def test_break_glass_mints_a_working_admin_token_in_the_database(
    db: Database, locked_out: CommandExecutor
) -> None:
    # when an operator runs the break-glass command where the database is reachable
    result = await tokens(db, "create", "ops", "--admin", "--json")
    # then it prints a new admin token's secret once, and that secret administers the registry
    assert result.exit_code == 0, result.output
    issued = json.loads(result.stdout)
    assert (issued["principal"], issued["roles"], issued["scopes"]) == ("ops", ["admin"], [])
    principal = await TokenAuthenticator(locked_out.store, locked_out, PEPPER).authenticate(
        issued["secret"]
    )
    assert principal.roles == (Role.ADMIN,)
    assert principal.scopes == ()
    # and the log shows who did it
    actor = await db.pool.fetchval(
        "SELECT convert_from(envelope, 'UTF8')::jsonb ->> 'actor' FROM events WHERE stream_id = $1",
        f"token:{issued['token_id']}",
    )
    assert await named(db.pool, actor) == "break-glass"


async def test_break_glass_refuses_a_pepper_that_is_not_the_servers(
    db: Database, locked_out: CommandExecutor, tmp_path: Path
) -> None:
    # when the operator's pepper is not the one the servers use, it is refused, naming it
    other = await tokens(db, "create", "ops", "--admin", MODELREG_TOKEN_PEPPER="y" * 40)
    assert other.exit_code == 2
    assert "MODELREG_TOKEN_PEPPER" in other.output
    # when there is no pepper at all, none is made up: the command says what to set
    none = await tokens(
        db, "create", "ops", "--admin", MODELREG_TOKEN_PEPPER="", MODELREG_DATA_DIR=str(tmp_path)
    )
    assert none.exit_code == 2
    assert "set MODELREG_TOKEN_PEPPER" in none.output
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []
    # then no admin token was minted
    assert await active_admin_ids(locked_out, datetime.now(UTC)) == []


async def test_break_glass_mints_only_registry_wide_admins(db: Database) -> None:
    result = await tokens(db, "create", "ops", "--admin", "--scope", "churn*")
    assert result.exit_code == 2
    assert "no --role or --scope" in result.output
    assert await db.pool.fetchval("SELECT count(*) FROM streams") == 0


async def test_break_glass_refuses_a_service_accounts_name(db: Database) -> None:
    # given a service account ci-bot, whose tokens are bounded to contributor on churn*
    executor = CommandExecutor(EventStore(db.pool, CODEC))
    await access.run(
        executor,
        CreateServiceAccount(
            actor="admin", now=datetime.now(UTC), name="ci-bot", roles=(Role.CONTRIBUTOR,)
        ),
    )
    # when an operator asks for a break-glass admin token under its name
    result = await tokens(db, "create", "ci-bot", "--admin")
    # then it is refused, saying how the account's tokens are issued, and none is minted
    assert result.exit_code == 2
    assert "is a service account" in result.output
    assert (
        await db.pool.fetchval("SELECT count(*) FROM streams WHERE stream_id LIKE 'token:%'") == 0
    )
