"""The webhook dispatcher as the settings configure it. I/O: none itself (it only constructs)."""

from __future__ import annotations

import asyncpg

from service.commands.token_secrets import Pepper
from service.settings import Settings
from service.webhooks.dispatcher import Connect, WebhookDispatcher
from service.webhooks.runner import DeliveryConfig
from service.webhooks.secrets import SecretBox


def delivery_config(settings: Settings) -> DeliveryConfig:
    return DeliveryConfig(
        timeout=settings.webhooks_timeout,
        max_attempts=settings.webhooks_max_attempts,
        max_age=settings.webhooks_max_age,
        backoff_initial=settings.webhooks_backoff_initial,
        backoff_max=settings.webhooks_backoff_max,
        poll_interval=settings.worker_poll_interval,
        allow_private=settings.webhooks_allow_private,
    )


def webhook_dispatcher(
    settings: Settings, pool: asyncpg.Pool, pepper: Pepper, connect: Connect
) -> WebhookDispatcher:
    """``pepper``: the one the API encrypts secrets under (checked at start-up)."""
    return WebhookDispatcher(
        connect,
        pool,
        settings.db_schema,
        SecretBox(pepper),
        delivery_config(settings),
        retention=settings.webhooks_retention_days * 86400.0,
    )
