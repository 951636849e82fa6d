"""One subscription's deliveries: a durable projection of the sealed log. I/O: Postgres, HTTP.

The runner reads the log after its cursor, keeps the events the subscription wants, and
queues them per model (a *lane*). Each lane sends its head, retrying with exponential
back-off and jitter until the receiver answers 2xx or the delivery is dead-lettered (after
``max_attempts`` attempts or ``max_age``); only then does the lane move on. So:

- **Order per model.** A model's events reach the receiver in log order; a failing event
  holds back later events of the same model only, never other models' lanes, nor other
  subscriptions (each runs in tasks of its own, and every request has a timeout).
- **Nothing after its deletion.** The subscription's own ``webhook.deleted`` is in the log
  it reads: the runner stops reading there, so no event after it is queued, even before
  the dispatcher notices the deletion and stops the runner.
- **Nothing skipped.** The cursor (``webhook_cursors``) moves only over a prefix where every
  wanted event is settled (delivered or dead), and each settled event beyond it is recorded
  (``webhook_deliveries``), so a restart resumes exactly: it re-reads after the cursor and
  skips what is recorded as settled. Delivery is at least once (a crash after the receiver
  answered and before the record is written sends again): receivers drop duplicates by
  ``webhook-id``, the event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import asyncpg
import httpcore
import msgspec

from eventlog.keys import model_names
from eventlog.log import LoggedEvent, read_log_as_stored
from eventlog.waiting import wake_or_stop
from events.streams import model_id_or_none, webhook_stream
from events.webhooks import WebhookDeleted, WebhookState
from service.webhooks import ledger
from service.webhooks.addresses import BlockedAddressError, UnresolvableError, resolve
from service.webhooks.log_tail import LogTail
from service.webhooks.payloads import body_of, shape_has, signed_headers

log = logging.getLogger(__name__)

# Seconds between batches of attempt records (and cursor moves) while deliveries go on.
RECORD_EVERY = 0.05


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    timeout: float = 10.0
    max_attempts: int = 30
    max_age: float = 3 * 86400.0
    backoff_initial: float = 1.0
    backoff_max: float = 3600.0
    poll_interval: float = 0.5
    allow_private: bool = False
    # Requests in flight per subscription (one per model lane at most).
    concurrency: int = 8
    # Wanted events held in memory per subscription before reading stops for a while.
    queue_limit: int = 10_000
    batch_size: int = 500


def backoff(
    attempt: int, config: DeliveryConfig, rand: Callable[[], float] = random.random
) -> float:
    """Seconds before attempt ``attempt + 1``: doubling from ``backoff_initial`` up to
    ``backoff_max``, each drawn uniformly from its upper half (jitter), so receivers coming
    back are not hit by every retry at once."""
    ceiling = min(config.backoff_max, config.backoff_initial * 2.0 ** min(attempt - 1, 62))
    return ceiling * (0.5 + rand() / 2)


@dataclass(slots=True)
class Item:
    event: LoggedEvent
    raw: bytes
    model_id: str
    model_name: str


@dataclass(slots=True)
class Outcome:
    response_code: int | None
    latency_ms: float
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.response_code is not None and 200 <= self.response_code < 300


@dataclass
class SubscriptionRunner:
    pool: asyncpg.Pool
    tail: LogTail
    state: WebhookState
    secret: str
    tls: ssl.SSLContext
    config: DeliveryConfig
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    cursor: int = 0
    scanned: int = 0
    _lanes: dict[str, deque[Item]] = field(default_factory=dict)
    _lane_tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _settled: set[int] = field(default_factory=set)
    _resume: dict[int, ledger.Known] = field(default_factory=dict)
    _names: dict[str, str] = field(default_factory=dict)
    _extra: set[asyncio.Task[None]] = field(default_factory=set)
    _records: list[ledger.Record] = field(default_factory=list)
    _full: bool = False
    # The log position of this subscription's deletion, once read: nothing past it is wanted.
    deleted_at: int | None = None
    _gate: asyncio.Semaphore = field(init=False)
    # A client (and connection pool) per subscription: one receiver's connections never
    # queue behind another's, and a small pool stays cheap to schedule.
    http: httpcore.AsyncConnectionPool = field(init=False)

    def __post_init__(self) -> None:
        self._gate = asyncio.Semaphore(self.config.concurrency)
        # httpcore, the core of httpx, without its client layers: a quarter more requests
        # per second from one process (bench/webhooks.py). It follows no redirects (one
        # could lead anywhere, past the address rule) and reads no proxy settings.
        self.http = httpcore.AsyncConnectionPool(
            ssl_context=self.tls,
            max_connections=self.config.concurrency,
            max_keepalive_connections=self.config.concurrency,
        )

    @property
    def subscription_id(self) -> str:
        return self.state.subscription_id

    @property
    def queued(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    async def run(self, stop: asyncio.Event) -> None:
        cursor = await ledger.init_cursor(
            self.pool, self.subscription_id, webhook_stream(self.subscription_id)
        )
        if cursor is None:
            return  # its creation is not sealed yet: the dispatcher starts it again later
        self.cursor = self.scanned = cursor
        known = await ledger.known_beyond(self.pool, self.subscription_id, cursor)
        self._settled = {p for p, k in known.items() if k.status in ledger.SETTLED}
        self._resume = {p: k for p, k in known.items() if k.status not in ledger.SETTLED}
        loop = asyncio.get_running_loop()
        checked = 0.0
        try:
            while not stop.is_set():
                self.wake.clear()
                more = await self._fill()
                # Settled deliveries are recorded, and the cursor moved over them, in
                # batches: a few statements a second, however many deliveries.
                await self._advance()
                if loop.time() - checked >= self.config.poll_interval:
                    checked = loop.time()
                    for position in await ledger.redeliveries(self.pool, self.subscription_id):
                        self._spawn(self._redeliver(position))
                if not more:
                    busy = bool(self._lanes or self._records)
                    pause = min(RECORD_EVERY, self.config.poll_interval) if busy else None
                    await wake_or_stop(self.wake, stop, pause or self.config.poll_interval)
        finally:
            tasks = [*self._lane_tasks.values(), *self._extra]
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.http.aclose()
            with contextlib.suppress(Exception):  # keep what was learnt, if the pool still can
                await self._flush()

    # ------------------------------------------------------------ reading the log

    async def _fill(self) -> bool:
        """Queue the next batch of wanted events; True when there may be more to read now."""
        if self.deleted_at is not None:
            return False
        if self.queued >= self.config.queue_limit:
            self._full = True  # a lane that settles wakes the loop to read on
            return False
        self._full = False
        batch = await self.tail.read(self.scanned, self.config.batch_size)
        if not batch:
            return False
        await self._learn_names(batch)
        own = webhook_stream(self.subscription_id)
        for event, raw in batch:
            if event.stream_id == own and event.event_type == WebhookDeleted.event_type:
                self.deleted_at = self.scanned = event.log_position
                return False
            model_id = model_id_or_none(event.stream_id)
            if model_id is None:
                continue
            if event.event_type == "model.registered":
                self._names[model_id] = msgspec.json.decode(event.envelope.data)["name"]
            elif event.event_type == "model.renamed":
                self._names[model_id] = msgspec.json.decode(event.envelope.data)["new_name"]
            name = self._names.get(model_id)
            if name is None or event.log_position in self._settled:
                continue
            if not self.state.wants(event.event_type, name):
                continue
            if not shape_has(self.state.payload_format, event.event_type):
                continue
            self._enqueue(Item(event, raw, model_id, name))
        self.scanned = batch[-1][0].log_position
        return len(batch) == self.config.batch_size

    async def _learn_names(self, batch: list[tuple[LoggedEvent, bytes]]) -> None:
        """Names of models first met in this batch and not registered in it: their current
        name (a rename after this point in the log shows up as its own event later)."""
        registered = {
            model_id_or_none(e.stream_id) for e, _ in batch if e.event_type == "model.registered"
        }
        unknown = {
            model_id
            for e, _ in batch
            if (model_id := model_id_or_none(e.stream_id)) is not None
            and model_id not in self._names
            and model_id not in registered
        }
        if unknown:
            self._names.update(await model_names(self.pool, unknown))

    def _enqueue(self, item: Item) -> None:
        lane = self._lanes.setdefault(item.model_id, deque())
        lane.append(item)
        task = self._lane_tasks.get(item.model_id)
        if task is None or task.done():
            self._lane_tasks[item.model_id] = asyncio.create_task(
                self._drain(item.model_id), name=f"webhook {self.subscription_id} {item.model_id}"
            )

    async def _flush(self) -> None:
        records, self._records = self._records, []
        if records:
            await ledger.record_attempts(self.pool, records)

    async def _advance(self) -> None:
        """Record the attempts made, then move the cursor over the prefix that is settled:
        up to the oldest head of a lane (dead letters are recorded before the cursor passes
        them, so they stay redeliverable)."""
        await self._flush()
        heads = [lane[0].event.log_position for lane in self._lanes.values() if lane]
        target = min(heads) - 1 if heads else self.scanned
        if target <= self.cursor:
            return
        if not await ledger.advance_cursor(self.pool, self.subscription_id, self.cursor, target):
            raise RuntimeError(f"webhook {self.subscription_id}: its cursor moved elsewhere")
        self.cursor = target
        self._settled = {p for p in self._settled if p > target}

    # ------------------------------------------------------------ sending

    async def _drain(self, model_id: str) -> None:
        lane = self._lanes[model_id]
        while lane:
            item = lane[0]
            await self._deliver(item, self._resume.pop(item.event.log_position, None))
            lane.popleft()
            self._settled.add(item.event.log_position)
            if self._full:
                self.wake.set()
        del self._lanes[model_id]
        self._lane_tasks.pop(model_id, None)

    def _spawn(self, work: asyncio.Future[None] | object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)  # type: ignore[arg-type]
        self._extra.add(task)
        task.add_done_callback(self._extra.discard)

    async def _redeliver(self, position: int) -> None:
        """An operator's redelivery: sent apart from the lanes (it is an old event, so it
        cannot keep order anyway), with a fresh budget of attempts."""
        found = await read_log_as_stored(self.pool, position - 1, 1)
        if not found or found[0][0].log_position != position:
            return
        event, raw = found[0]
        model_id = model_id_or_none(event.stream_id) or ""
        names = await model_names(self.pool, [model_id]) if model_id else {}
        await self._deliver(Item(event, raw, model_id, names.get(model_id, "")), None)

    async def _deliver(self, item: Item, known: ledger.Known | None) -> None:
        """Send until delivered or dead-lettered; every attempt is recorded."""
        event = item.event
        position = event.log_position
        attempts = known.attempts if known else 0
        first = known.first_attempt_at if known else None
        if known is not None and known.next_attempt_at is not None:
            await _sleep_until(known.next_attempt_at)  # a back-off that a restart cut short
        target = ledger.Target(
            self.subscription_id, position, event.envelope.event_id, event.event_type,
            item.model_id,
        )  # fmt: skip
        body = body_of(self.state.payload_format, event, item.raw, item.model_name)
        while True:
            now = datetime.now(UTC)
            first = first or now
            async with self._gate:
                outcome = await self._post(str(event.envelope.event_id), body, now)
            attempts += 1
            if outcome.delivered:
                status, next_at = "delivered", None
            elif (
                attempts >= self.config.max_attempts
                or (now - first).total_seconds() >= self.config.max_age
            ):
                status, next_at = "dead", None
                log.warning(
                    "webhook %s: event at %d dead-lettered after %d attempts (%s)",
                    self.subscription_id, position, attempts, outcome.error or outcome.response_code,
                )  # fmt: skip
            else:
                status = "pending"
                next_at = now + timedelta(seconds=backoff(attempts, self.config))
            self._records.append(
                ledger.Record(
                    target=target, attempt=attempts, attempted_at=now, first_attempt_at=first,
                    response_code=outcome.response_code, latency_ms=outcome.latency_ms,
                    error=outcome.error, status=status, next_attempt_at=next_at,
                )
            )  # fmt: skip
            if next_at is None:
                return
            await _sleep_until(next_at)

    async def _post(self, message_id: str, body: bytes, now: datetime) -> Outcome:
        started = time.perf_counter()
        headers = signed_headers(self.state.payload_format, self.secret, message_id, body, now)
        timeout = self.config.timeout
        try:
            target = await resolve(self.state.url, allow_private=self.config.allow_private)
            headers["host"] = target.host_header or self._host
            headers["content-length"] = str(len(body))
            extensions: dict[str, object] = {
                "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
            }
            if target.sni_hostname:
                extensions["sni_hostname"] = target.sni_hostname
            async with asyncio.timeout(timeout * 2):  # a receiver that trickles its answer
                async with self.http.stream(
                    "POST", target.url, headers=list(headers.items()), content=body,
                    extensions=extensions,
                ) as response:  # fmt: skip
                    status = response.status
                    await _drain_answer(response)
        except (BlockedAddressError, UnresolvableError) as exc:
            return Outcome(None, _ms_since(started), str(exc))
        except HTTP_ERRORS as exc:
            return Outcome(None, _ms_since(started), f"{type(exc).__name__}: {exc}"[:500])
        return Outcome(
            status, _ms_since(started), None if 200 <= status < 300 else f"HTTP {status}"
        )

    @property
    def _host(self) -> str:
        return urlsplit(self.state.url).netloc.rsplit("@", 1)[-1]


HTTP_ERRORS: tuple[type[Exception], ...] = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.PoolTimeout,
    TimeoutError,
    OSError,
)
MAX_ANSWER = 64 * 1024


async def _drain_answer(response: httpcore.Response) -> None:
    """Read (and drop) the receiver's answer so the connection can be reused; past
    ``MAX_ANSWER`` bytes stop, and the connection is closed instead."""
    read = 0
    async for chunk in response.aiter_stream():
        read += len(chunk)
        if read > MAX_ANSWER:
            break


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


async def _sleep_until(moment: datetime) -> None:
    delay = (moment - datetime.now(UTC)).total_seconds()
    if delay > 0:
        await asyncio.sleep(delay)
