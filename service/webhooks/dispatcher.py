"""The webhook worker: one leader runs a ``SubscriptionRunner`` per live subscription. I/O.

It is a singleton role like the relay and the projection runner (``eventlog.leadership``):
extra replicas stand by. While leading it follows the subscriptions (their streams) and
starts or stops runners as they are created or deleted, wakes them on the sealer's NOTIFY
(polling as a fallback), and prunes the delivery log past its retention. A runner that
crashes is logged and started again from its cursor at the next round.

Runners write through the pool, not on the role's session: many deliveries are recorded at
once. A stale leader (one whose lease ended while it was frozen) can therefore still send
and record what it was sending; that only repeats deliveries (at least once, receivers drop
duplicates by ``webhook-id``), and the cursor moves by compare-and-set, never backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import certifi

from eventlog.db import lock_key
from eventlog.leadership import Leadership, Term
from eventlog.listener import Listener
from eventlog.sealer import sealed_channel
from eventlog.store import EventStore
from eventlog.waiting import sleep_or_stop, wake_or_stop
from events.catalogue import CODEC
from events.streams import WEBHOOK_TYPE, webhook_id_of
from events.webhooks import WEBHOOKS, WebhookState
from service.webhooks import ledger
from service.webhooks.log_tail import LogTail
from service.webhooks.runner import DeliveryConfig, SubscriptionRunner
from service.webhooks.secrets import SecretBox, SecretUnavailableError, load_secret

log = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]
PRUNE_EVERY = 3600.0
# Subscriptions are looked up again at most this often, however often seals wake the
# leader: under load the sealer NOTIFYs on every batch, and each look is two queries
# (about 1.5% of what an MLflow create cost the worker at c=16). Runners are still woken
# by every seal, so deliveries are not delayed; a new subscription starts at most this
# much later (its runner starts from its own cursor, so it misses nothing).
FOLLOW_AT_MOST_EVERY = 0.1


@dataclass(slots=True)
class _Running:
    runner: SubscriptionRunner
    task: asyncio.Task[None]
    stop: asyncio.Event


class WebhookDispatcher:
    def __init__(
        self,
        connect: Connect,
        pool: asyncpg.Pool,
        schema: str,
        box: SecretBox,
        config: DeliveryConfig,
        *,
        retention: float = 7 * 86400.0,
        standby_interval: float = 1.0,
    ) -> None:
        self._connect = connect
        self.pool = pool
        self.schema = schema
        self.box = box
        self.config = config
        self.retention = retention
        self.leadership = Leadership(
            connect,
            lock_key(schema, "webhooks"),
            role="webhooks",
            standby_interval=standby_interval,
        )
        self._store = EventStore(pool, CODEC)
        self._tail = LogTail(pool)
        self._wake = asyncio.Event()
        self._running: dict[str, _Running] = {}
        self._versions: dict[str, int] = {}

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        listener = Listener(self._connect, sealed_channel(self.schema), self._notify)
        listener.start()
        try:
            await self.leadership.run(self._lead, stop)
        finally:
            await listener.close()

    def _notify(self) -> None:
        self._wake.set()
        for running in self._running.values():
            running.runner.wake.set()

    async def _lead(self, term: Term) -> None:
        # One TLS context for every runner's client: building one reads the CA bundle.
        tls = ssl.create_default_context(cafile=certifi.where())
        last_prune = 0.0
        try:
            while not term.ended.is_set():
                self._wake.clear()
                # Touch the role's own session: a leader cut off from it stops here.
                await term.conn.fetchval("SELECT 1")
                await self._follow(tls)
                if time.monotonic() - last_prune > PRUNE_EVERY:
                    await ledger.prune(
                        self.pool, datetime.now(UTC) - timedelta(seconds=self.retention)
                    )
                    last_prune = time.monotonic()
                followed = time.monotonic()
                await wake_or_stop(self._wake, term.ended, self.config.poll_interval)
                since = time.monotonic() - followed
                if since < FOLLOW_AT_MOST_EVERY:
                    await sleep_or_stop(term.ended, FOLLOW_AT_MOST_EVERY - since)
        finally:
            await self._stop_all()

    async def _follow(self, tls: ssl.SSLContext) -> None:
        """Start runners for new subscriptions, stop deleted ones, restart crashed ones."""
        rows = await self.pool.fetch(
            "SELECT stream_id, version FROM streams WHERE stream_id LIKE $1",
            f"{WEBHOOK_TYPE}:%",
        )
        for row in rows:
            subscription_id = webhook_id_of(row["stream_id"])
            running = self._running.get(subscription_id)
            if running is not None and running.task.done():
                if not running.task.cancelled() and running.task.exception() is not None:
                    log.error(
                        "webhook %s: runner crashed; restarting",
                        subscription_id,
                        exc_info=running.task.exception(),
                    )
                self._running.pop(subscription_id)
                running = None
            if self._versions.get(subscription_id) == row["version"] and running is not None:
                continue
            _, state = await self._state(row["stream_id"])
            self._versions[subscription_id] = row["version"]
            if not state.active:
                if running is not None:
                    await self._stop(subscription_id)
                    await ledger.forget_subscription(self.pool, subscription_id)
                continue
            if running is None:
                await self._start(state, tls)

    async def _state(self, stream_id: str) -> tuple[int, WebhookState]:
        stored = await self._store.read_stream(stream_id)
        return len(stored), WEBHOOKS.fold(CODEC.decode(e.envelope) for e in stored)  # type: ignore[misc]

    async def _start(self, state: WebhookState, tls: ssl.SSLContext) -> None:
        try:
            secret = await load_secret(self.pool, self.box, state.subscription_id)
        except SecretUnavailableError as exc:
            log.error("webhook %s: %s; not delivering", state.subscription_id, exc)
            return
        runner = SubscriptionRunner(self.pool, self._tail, state, secret, tls, self.config)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop), name=f"webhook {state.subscription_id}")
        self._running[state.subscription_id] = _Running(runner, task, stop)

    async def _stop(self, subscription_id: str) -> None:
        running = self._running.pop(subscription_id, None)
        if running is None:
            return
        running.stop.set()
        running.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await running.task

    async def _stop_all(self) -> None:
        for subscription_id in list(self._running):
            await self._stop(subscription_id)
        self._versions.clear()
