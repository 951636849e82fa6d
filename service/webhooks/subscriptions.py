"""Creating, listing and deleting webhook subscriptions, and who may. I/O: the event store.

Who may manage a subscription: a token with the ``write`` permission over every model the
subscription can deliver events of. A token narrowed to ``churn*`` may create, see and
delete subscriptions whose model filter stays inside ``churn*``; a subscription to every
model (no filter) needs a token that covers the whole registry (admin, or an unscoped
contributor). A webhook only ever carries what its manager could read anyway.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from events.access import Permission
from events.errors import ConcurrencyError, ConflictError, NotFoundError
from events.streams import WEBHOOK_TYPE, webhook_stream
from events.webhooks import (
    WEBHOOKS,
    CreateWebhook,
    DeleteWebhook,
    PayloadFormat,
    WebhookEvent,
    WebhookState,
)
from service.commands.executor import CommandExecutor, Outcome
from service.commands.tokens import Principal
from service.webhooks.secrets import (
    SecretBox,
    check_secret,
    forget_secret,
    new_secret,
    store_secret,
)


def pattern_within(pattern: str, scopes: tuple[str, ...]) -> bool:
    """Whether every model name a filter ``pattern`` matches is inside ``scopes``."""
    if not scopes or "*" in scopes:
        return True
    if pattern == "*":
        return False
    for scope in scopes:
        if scope.endswith("*"):
            if pattern.startswith(scope[:-1]):
                return True
        elif pattern == scope:
            return True
    return False


def may_manage(principal: Principal, state: WebhookState) -> bool:
    """``write`` over every model ``state`` delivers (see the module's docstring)."""
    if Permission.WRITE not in principal.permissions:
        return False
    if not state.models:
        return pattern_within("*", principal.scopes)
    return all(pattern_within(p, principal.scopes) for p in state.models)


async def create_webhook(
    executor: CommandExecutor,
    box: SecretBox,
    *,
    actor: str,
    url: str,
    event_types: Sequence[str] = (),
    models: Sequence[str] = (),
    payload_format: PayloadFormat = PayloadFormat.MODELREG,
    description: str = "",
    secret: str | None = None,
    subscription_id: str | None = None,
    id_seed: str | None = None,
) -> tuple[Outcome[WebhookState, WebhookEvent], str]:
    """Create a subscription; return the outcome and its secret (shown this once).

    The event and the encrypted secret are written in one transaction: a subscription never
    exists without its secret.
    """
    secret = new_secret() if secret is None else check_secret(secret)
    subscription_id = subscription_id or uuid.uuid4().hex
    command = CreateWebhook(
        actor=actor,
        now=datetime.now(UTC),
        subscription_id=subscription_id,
        url=url,
        event_types=tuple(event_types),
        models=tuple(models),
        payload_format=payload_format,
        description=description,
    )

    async def secret_row(conn: asyncpg.Connection) -> None:
        await store_secret(conn, box, subscription_id, secret)

    try:
        outcome = await executor.execute_beside(
            webhook_stream(subscription_id),
            WEBHOOKS,
            command,
            actor=actor,
            beside=secret_row,
            id_seed=id_seed,
        )
    except (asyncpg.UniqueViolationError, ConcurrencyError):
        raise ConflictError(
            f"webhook {subscription_id} exists already", subscription_id=subscription_id
        ) from None
    return outcome, secret


async def webhook(executor: CommandExecutor, subscription_id: str) -> WebhookState:
    """A subscription (deleted ones included); 404 when it never existed."""
    stream = webhook_stream(subscription_id)
    version, state = await executor.state_of(stream, WEBHOOKS)
    if version == 0:
        raise NotFoundError(f"no webhook {subscription_id!r}", subscription_id=subscription_id)
    return state


async def all_webhooks(executor: CommandExecutor) -> list[WebhookState]:
    found = []
    for stream_id in await executor.store.stream_ids(WEBHOOK_TYPE):
        _, state = await executor.state_of(stream_id, WEBHOOKS)
        if state.created:
            found.append(state)
    return found


async def delete_webhook(
    executor: CommandExecutor, subscription_id: str, *, actor: str, reason: str = ""
) -> Outcome[WebhookState, WebhookEvent]:
    """Delete a subscription: nothing more is sent to it, and its secret is erased."""
    outcome = await executor.execute(
        webhook_stream(subscription_id),
        WEBHOOKS,
        DeleteWebhook(actor=actor, now=datetime.now(UTC), reason=reason),
    )
    await forget_secret(executor.store.pool, subscription_id)
    return outcome
