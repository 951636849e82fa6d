"""``modelreg tokens create NAME --admin``: mint an admin token straight in the database.
I/O: Postgres, the pepper file.

The way back in when no admin token works any more (the last one lost, expired or
leaked and revoked): it needs no token and no running API, only what the servers
themselves need, the database (``MODELREG_DATABASE_URL``, or the data dir's embedded
Postgres) and the token pepper (``MODELREG_TOKEN_PEPPER``, or the data dir's file). Whoever
can run it can read the database anyway; the event it records names the actor
``break-glass``, so the audit log shows every use.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from eventlog.store import EventStore
from events.access import Role
from events.catalogue import CODEC
from events.errors import ConflictError
from service.commands import access
from service.commands.executor import CommandExecutor
from service.commands.token_secrets import check_pepper, load_pepper
from service.commands.tokens import issue_token
from service.identity.subjects import SubjectDirectory
from service.settings import Settings

ACTOR = "break-glass"


def mint_admin(
    settings: Settings, principal: str, *, expires_at: datetime | None, description: str
) -> tuple[str, str]:
    """Issue an admin token in the database; return its id and secret."""
    from service.cli.database import run_with_pool  # starts embedded Postgres if needed

    # Never create a pepper here: a new one would not be the servers' (check_pepper says so).
    pepper = load_pepper(settings.token_pepper, settings.data_dir, create=False)

    async def work(pool: asyncpg.Pool) -> tuple[str, str]:
        await check_pepper(pool, pepper)
        executor = CommandExecutor(EventStore(pool, CODEC), subjects=SubjectDirectory(pool))
        if (await access.current(executor)).service_account(principal) is not None:
            # The way back in is for people: an admin token under a service account's name
            # would escape the account's roles, scopes and maximum lifetime.
            raise ConflictError(
                f"{principal!r} is a service account: the break-glass token is for a person;"
                " issue the account's tokens with `modelreg tokens issue --service-account`",
                name=principal,
            )
        outcome, secret = await issue_token(
            executor,
            pepper,
            actor=ACTOR,
            principal=principal,
            roles=(Role.ADMIN,),
            expires_at=expires_at,
            description=description or f"break-glass admin token, {datetime.now(UTC):%Y-%m-%d}",
        )
        return outcome.state.token_id, secret

    return run_with_pool(settings, work)
