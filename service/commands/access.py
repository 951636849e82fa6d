"""Custom roles, grants, service accounts, and "who could do what at T". I/O: through the
event store and the sealed log.

Writes go to the ``access:registry`` stream (``events.access_grants``). Reads "as of" a
log position fold that stream's events and the tokens' events from the sealed log up to
it, so the answer for a past position is exactly what authentication would have decided
then: the grants given by then (not later), the tokens issued and not yet revoked or
expired at that moment, the service accounts not yet disabled.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
import msgspec

from eventlog.log import head_position, position_at, read_log
from events.access import TOKEN_EVENT_TYPES, TOKENS, Permission, TokenState
from events.access_grants import (
    ACCESS,
    ACCESS_EVENT_TYPES,
    AccessCommand,
    AccessEvent,
    AccessState,
    Decision,
    Right,
    decide_access,
    granted_rights,
    token_rights,
)
from events.catalogue import CODEC
from events.streams import ACCESS_STREAM
from service.commands.executor import CommandExecutor, Outcome

_ACCESS_TYPES = frozenset(t.event_type for t in ACCESS_EVENT_TYPES)
_TOKEN_TYPES = frozenset(t.event_type for t in TOKEN_EVENT_TYPES)
_BATCH = 1000


class AccessAt(msgspec.Struct, frozen=True, kw_only=True):
    """The access state and the live tokens as they stood at ``position`` (``moment``)."""

    position: int
    moment: datetime
    access: AccessState
    tokens: tuple[TokenState, ...]


async def run(
    executor: CommandExecutor, command: AccessCommand, *, id_seed: str | None = None
) -> Outcome[AccessState, AccessEvent]:
    return await executor.execute(ACCESS_STREAM, ACCESS, command, id_seed=id_seed)


async def current(executor: CommandExecutor) -> AccessState:
    _, state = await executor.state_of(ACCESS_STREAM, ACCESS)
    return state


async def access_at(pool: asyncpg.Pool, as_of: int | datetime | None) -> AccessAt:
    """Fold roles, grants, accounts and tokens from the sealed log up to ``as_of``: a log
    position, a time (the last position sealed by then), or None (the head). A token's
    expiry is judged at that time: the one given, when the position was sealed, or now."""
    head = await head_position(pool)
    if isinstance(as_of, datetime):
        up_to = await position_at(pool, as_of)
        moment = min(as_of, datetime.now(UTC))
    elif as_of is None or as_of >= head:
        up_to, moment = head, datetime.now(UTC)
    else:
        up_to = as_of
        sealed = await pool.fetchval(
            "SELECT sealed_at FROM event_log WHERE log_position = $1", up_to
        )
        moment = sealed if isinstance(sealed, datetime) else datetime.now(UTC)
    access = ACCESS.initial_state()
    tokens: dict[str, TokenState] = {}
    after = 0
    while True:
        batch = await read_log(pool, after, _BATCH, up_to=up_to, types=_ACCESS_TYPES | _TOKEN_TYPES)
        for logged in batch:
            event = CODEC.decode(logged.envelope)
            if logged.event_type in _ACCESS_TYPES:
                access = ACCESS.evolve(access, event)  # type: ignore[arg-type]
            else:
                stream = logged.stream_id
                state = tokens.get(stream, TOKENS.initial_state())
                tokens[stream] = TOKENS.evolve(state, event)  # type: ignore[arg-type]
        if len(batch) < _BATCH:
            break
        after = batch[-1].log_position
    return AccessAt(position=up_to, moment=moment, access=access, tokens=tuple(tokens.values()))


def rights_at(
    at: AccessAt, principal: str, groups: Sequence[str], recorded_as: Sequence[str] = ()
) -> tuple[Right, ...]:
    """What ``principal`` (a member of ``groups``) held at ``at``: the rights of each of
    its tokens live then, and its grants'. A disabled service account's tokens give none.
    ``recorded_as``: the ids its tokens may name it by (its subject id; its name is one)."""
    account = at.access.service_account(principal)
    own: list[Right] = []
    holders = {principal, *recorded_as}
    if account is None or not account.disabled:
        for token in at.tokens:
            if token.principal in holders and token.active_at(at.moment):
                roles = ",".join(token.roles)
                own.extend(
                    token_rights(
                        token.permissions, token.scopes, f"token {token.token_id} (roles {roles})"
                    )
                )
    return (*own, *granted_rights(at.access, principal, groups, recorded_as))


def explain(
    at: AccessAt,
    principal: str,
    groups: Sequence[str],
    permission: Permission,
    model_name: str | None,
    recorded_as: Sequence[str] = (),
) -> Decision:
    return decide_access(rights_at(at, principal, groups, recorded_as), permission, model_name)
