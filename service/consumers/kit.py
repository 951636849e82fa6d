"""The consumer kit: follow registry events from JetStream, each handled once, in order.

Downstream systems (deployment agents, auditors, notifiers) write one async handler and
get, for a durable consumer name:

- **Once per consumer.** Every event the filters select reaches the handler until it
  succeeds once, and never again after that: de-duplication on ``ce-id`` (the event id) in
  a store the consumer chooses (``MemoryDedup`` for tests, ``FileDedup``, or
  ``PostgresDedup``), so redeliveries, restarts and copies re-sent beyond JetStream's
  duplicate window are all skipped. With ``PostgresDedup`` the handler receives the
  transaction that records the event (``delivery.conn``): writes made there commit with
  the record or not at all, an exactly-once *effect*. With the other stores, or effects
  outside that database, a crash between the effect and the record repeats the effect on
  redelivery (at-least-once), so such handlers should be idempotent.
- **In order.** Events are handled one at a time in stream order, which is the registry's
  log order; so events of one model (one ``ce-subject``) are always handled in the order
  they happened. A failing event is retried in place, holding back those behind it, until
  it succeeds or is dead-lettered. A batch is acknowledged only after all of it was handled,
  and after a crash or a lost connection the kit waits for the server to redeliver what it
  held (``ack_wait``) before asking for anything newer, so nothing overtakes an event that
  was in flight. Run **one instance per durable name** at a time (several would split the
  stream between them and could interleave one model's events).
- **Dead letters.** After ``max_attempts`` failed handler calls on one delivery (retried
  with exponential back-off), or ``max_deliveries`` deliveries without completing (a
  handler crashing its process), or a message that is not a valid modelreg CloudEvent, the
  event is published to the stream ``<STREAM>_DLQ`` on ``<root>.dlq.<consumer>`` (``<root>``
  is the subject prefix without its last token: ``modelreg.dlq.<consumer>``) with its
  original headers and payload plus ``Modelreg-Dlq-Reason`` (percent-encoded),
  ``-Consumer``, ``-Attempts``, ``-Stream-Seq`` and ``-Subject``, then terminated on the
  main stream so it is not redelivered. A dead-lettered event is not recorded as handled.
- **Forgeries rejected.** Every event must extend the registry's hash chains as verified
  from the stream's first event (``service.consumers.chain_check``): a message whose bytes,
  headers, stream position or log position do not chain is dead-lettered with the reason,
  never handed to the handler, and counted in ``stats.rejected``. The check reads the
  messages a filtered or resumed consumer is not delivered, so starting one reads the
  stream once. Turn it off (``verify_chain=False``) only for a stream whose first events
  were dropped by an age or size limit.
- **Filters.** ``event_types`` filter on the server (subjects ``<prefix>.<type>``);
  ``models`` filter on the client by the model id in ``ce-subject`` (``model:<id>`` and
  ``metrics:<id>:<version>``), because model ids never become subject tokens. Events
  filtered out are acknowledged without calling the handler.

Usage::

    async def on_event(delivery: Delivery) -> None:
        if delivery.event.type == "model.stage_transitioned":
            ...  # delivery.envelope is the decoded envelope, delivery.payload its bytes

    nc = await nats.connect("nats://...")
    consumer = EventConsumer(nc, Subscription(name="deployer", event_types=["model.stage_transitioned"]),
                             FileDedup(Path("deployer.seen")), on_event)
    await consumer.run(stop)  # until stop is set
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, Protocol, TypeAlias
from uuid import UUID

import asyncpg
import nats.errors
import nats.js.errors
from asyncpg.pool import PoolConnectionProxy
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from eventlog.waiting import sleep_or_stop
from events.envelope import Envelope, decode_envelope
from events.streams import model_id_or_none
from events.streams import model_id_or_none as model_of  # the kit's public name for it
from service.consumers.chain_check import ChainCheck
from service.publication.cloudevents import (
    CloudEventError,
    EventHeaders,
    decode_headers,
    percent_encode,
    subject_for,
)

log = logging.getLogger(__name__)

DLQ_REASON = "Modelreg-Dlq-Reason"
DLQ_CONSUMER = "Modelreg-Dlq-Consumer"
DLQ_ATTEMPTS = "Modelreg-Dlq-Attempts"
DLQ_STREAM_SEQ = "Modelreg-Dlq-Stream-Seq"
DLQ_SUBJECT = "Modelreg-Dlq-Subject"
_NOT_COPIED = {"nats-msg-id", "nats-expected-last-msg-id", "nats-expected-stream"}
_MAX_REASON = 2000

# What a PostgresDedup hands the handler: a pooled connection inside the recording transaction.
DbConnection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"


# ---------------------------------------------------------------- what the handler sees


@dataclass(frozen=True)
class Delivery:
    """One event handed to the handler."""

    event: EventHeaders
    payload: bytes  # the stored envelope bytes, exactly as the registry hashed them
    subject: str
    stream_seq: int
    num_delivered: int
    attempt: int  # 1 for the first handler call on this delivery
    # The transaction recording this event, when the dedup store is PostgresDedup.
    conn: DbConnection | None = None

    @cached_property
    def envelope(self) -> Envelope:
        return decode_envelope(self.payload)

    @property
    def model_id(self) -> str | None:
        return model_id_or_none(self.event.subject)


Handler = Callable[[Delivery], Awaitable[None]]


# ---------------------------------------------------------------- de-duplication stores


class Claim(Protocol):
    """The right to handle one event; committed after the handler succeeds."""

    @property
    def conn(self) -> DbConnection | None: ...

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...


class DedupStore(Protocol):
    async def begin(self, consumer: str, event_id: UUID) -> Claim | None:
        """None when ``consumer`` handled ``event_id`` already; else a claim to settle."""
        ...


class _SetClaim:
    conn: DbConnection | None = None

    def __init__(self, on_commit: Callable[[], Awaitable[None]]) -> None:
        self._on_commit = on_commit

    async def commit(self) -> None:
        await self._on_commit()

    async def abort(self) -> None:
        return None


class MemoryDedup:
    """Remembers handled events for the life of the process: for tests and throwaway use."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, UUID]] = set()

    async def begin(self, consumer: str, event_id: UUID) -> Claim | None:
        key = (consumer, event_id)
        if key in self.seen:
            return None

        async def record() -> None:
            self.seen.add(key)

        return _SetClaim(record)


class FileDedup:
    """Remembers handled events in an append-only file, one ``consumer event_id`` per line,
    flushed and fsynced before the event is acknowledged. A torn last line (a crash while
    writing it) is ignored, so that event is handled again."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._seen: set[tuple[str, str]] = set()
        if path.exists():
            text = path.read_bytes()
            complete = text[: text.rfind(b"\n") + 1]
            if len(complete) < len(text):
                # Cut the torn line off, or the next record would be glued to it.
                with path.open("r+b") as f:
                    f.truncate(len(complete))
            for line in complete.decode("utf-8").splitlines():
                consumer, _, event_id = line.rpartition(" ")
                if consumer:
                    self._seen.add((consumer, event_id))
        self._file = path.open("a", encoding="utf-8")

    async def begin(self, consumer: str, event_id: UUID) -> Claim | None:
        key = (consumer, str(event_id))
        if key in self._seen:
            return None

        async def record() -> None:
            self._file.write(f"{key[0]} {key[1]}\n")
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self._seen.add(key)

        return _SetClaim(record)

    def close(self) -> None:
        self._file.close()


class _PostgresClaim:
    def __init__(
        self, pool: asyncpg.Pool, conn: DbConnection, tx: asyncpg.transaction.Transaction
    ) -> None:
        self._pool, self.conn, self._tx = pool, conn, tx

    async def commit(self) -> None:
        try:
            await self._tx.commit()
        finally:
            await self._pool.release(self.conn)

    async def abort(self) -> None:
        try:
            await self._tx.rollback()
        finally:
            await self._pool.release(self.conn)


class PostgresDedup:
    """Records handled events in a table ``(consumer text, event_id uuid, PRIMARY KEY (...))``
    — ``consumer_inbox`` in the registry's schema, or any table of that shape — inside
    the transaction the handler gets, so its writes and the record commit together."""

    def __init__(self, pool: asyncpg.Pool, *, table: str = "consumer_inbox") -> None:
        if not table.replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"table name {table!r} is not a plain identifier")
        self.pool = pool
        self._insert = f"INSERT INTO {table} (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1"

    async def begin(self, consumer: str, event_id: UUID) -> Claim | None:
        conn: DbConnection = await self.pool.acquire()
        tx = conn.transaction()
        try:
            await tx.start()
            # A concurrent holder of the same row makes this wait for its outcome.
            inserted = await conn.fetchval(self._insert, consumer, event_id)
        except BaseException:
            with contextlib.suppress(Exception):
                await tx.rollback()
            await self.pool.release(conn)
            raise
        if inserted is None:
            await tx.rollback()
            await self.pool.release(conn)
            return None
        return _PostgresClaim(self.pool, conn, tx)


# ---------------------------------------------------------------- the consumer


@dataclass(frozen=True, slots=True)
class Subscription:
    """What to consume and how. ``name`` is the durable consumer name."""

    name: str
    stream: str = "MODELREG_EVENTS"
    subject_prefix: str = "modelreg.events"
    event_types: Sequence[str] = ()
    models: Collection[str] = ()
    # Where a new durable starts: "all" (the whole history) or "new" (from now on).
    deliver: Literal["all", "new"] = "all"
    batch_size: int = 64
    ack_wait: float = 30.0
    max_attempts: int = 5
    max_deliveries: int = 20
    retry_backoff: float = 0.2
    retry_backoff_max: float = 5.0
    # How long one empty pull waits on the server before asking again.
    pull_wait: float = 1.0
    dlq_replicas: int = 1
    # Reject events that do not extend the verified hash chains (see the module doc).
    verify_chain: bool = True

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in ". *>\t\r\n"):
            raise ValueError(
                f"consumer name {self.name!r} must be non-empty with no '.', '*', '>' or spaces"
            )
        for event_type in self.event_types:
            subject_for(self.subject_prefix, event_type)
        if self.max_attempts < 1 or self.batch_size < 1:
            raise ValueError("max_attempts and batch_size must be at least 1")

    @property
    def dlq_stream(self) -> str:
        return f"{self.stream}_DLQ"

    @property
    def dlq_root(self) -> str:
        head, dot, _ = self.subject_prefix.rpartition(".")
        return f"{head}.dlq" if dot else f"{self.subject_prefix}_dlq"

    @property
    def dlq_subject(self) -> str:
        return f"{self.dlq_root}.{self.name}"

    def consumer_config(self) -> ConsumerConfig:
        filters = [subject_for(self.subject_prefix, t) for t in self.event_types] or [
            f"{self.subject_prefix}.>"
        ]
        return ConsumerConfig(
            durable_name=self.name,
            name=self.name,
            deliver_policy=DeliverPolicy.ALL if self.deliver == "all" else DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            # The kit redelivers and dead-letters itself; the server must never drop.
            max_deliver=-1,
            # Room for one batch being acknowledged while the next is pulled.
            max_ack_pending=2 * self.batch_size,
            filter_subjects=filters if len(filters) > 1 else None,
            filter_subject=filters[0] if len(filters) == 1 else None,
        )


@dataclass(slots=True)
class ConsumerStats:
    handled: int = 0
    duplicates: int = 0  # skipped: handled before (redelivery, restart or re-sent copy)
    filtered: int = 0  # skipped: not one of the selected models
    retries: int = 0
    dead_lettered: int = 0
    rejected: int = 0  # dead-lettered because they do not extend the verified chains
    recoveries: int = 0  # waits for the redelivery of what a crashed session held


class PullInterruptedError(RuntimeError):
    """A pull request ended without the server saying so; deliveries may be lost in flight."""


Outcome = Literal["handled", "duplicate", "filtered", "dead_lettered"]


class EventConsumer:
    def __init__(
        self, nc: NatsClient, subscription: Subscription, dedup: DedupStore, handler: Handler
    ) -> None:
        self.nc = nc
        self.subscription = subscription
        self.dedup = dedup
        self.handler = handler
        self.stats = ConsumerStats()
        self._inbox: NatsSubscription | None = None
        self._ready = False
        self._models = frozenset(subscription.models)
        self._chain = ChainCheck(nc, subscription.stream) if subscription.verify_chain else None

    async def ensure(self) -> None:
        """Create or update the durable consumer and the dead-letter stream; then, if
        deliveries are outstanding from an earlier session, wait for their redelivery."""
        sub = self.subscription
        jsm = self.nc.jsm(timeout=10)
        await jsm.add_consumer(sub.stream, sub.consumer_config())
        try:
            await jsm.add_stream(
                StreamConfig(
                    name=sub.dlq_stream,
                    subjects=[f"{sub.dlq_root}.>"],
                    storage=StorageType.FILE,
                    retention=RetentionPolicy.LIMITS,
                    discard=DiscardPolicy.OLD,
                    num_replicas=sub.dlq_replicas,
                    duplicate_window=3600.0,
                )
            )
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != 10058:  # exists already (with whatever an operator set)
                raise
        await self._reset_inbox()
        await self._recover()
        self._ready = True

    async def process_batch(self) -> int:
        """Pull what is available (waiting up to ``pull_wait`` when nothing is), handle it
        in order and acknowledge it; return how many messages were settled."""
        if not self._ready:
            await self.ensure()
        messages = await self._pull(self.subscription.batch_size, no_wait=True)
        if not messages:
            # Long-poll for one, so a new event is handled as soon as it is published.
            messages = await self._pull(1, no_wait=False)
        if not messages:
            return 0
        outcomes: list[Outcome] = []
        heartbeat = asyncio.create_task(self._keep_alive(messages))
        try:
            for message in messages:
                outcomes.append(await self._handle(message))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        # Settled only now: until the whole batch is handled, none of it is released, so
        # after a crash the batch comes back whole and in order.
        for message, outcome in zip(messages, outcomes, strict=True):
            await (message.term() if outcome == "dead_lettered" else message.ack())
        await self.nc.flush()
        return len(messages)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; NATS and database failures back off and resume."""
        backoff = self.subscription.retry_backoff
        while not stop.is_set():
            try:
                await self.process_batch()
                backoff = self.subscription.retry_backoff
            except (
                nats.errors.Error,
                OSError,
                TimeoutError,
                PullInterruptedError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
            ) as exc:
                log.warning(
                    "consumer %s: %s; retrying in %.1f s",
                    self.subscription.name,
                    str(exc) or type(exc).__name__,
                    backoff,
                )
                self._ready = False
                await sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, self.subscription.retry_backoff_max)

    # ------------------------------------------------------------ handling one message

    async def _handle(self, message: Msg) -> Outcome:
        sub = self.subscription
        metadata = message.metadata
        try:
            event = decode_headers(message.headers)
        except CloudEventError as exc:
            return await self._dead_letter(message, f"not a modelreg CloudEvent: {exc}", 0)
        if self._chain is not None:
            problem = await self._chain.check(metadata.sequence.stream, event, message.data)
            if problem is not None:
                self.stats.rejected += 1
                return await self._dead_letter(message, f"forged or corrupt: {problem}", 0)
        if self._models and model_id_or_none(event.subject) not in self._models:
            self.stats.filtered += 1
            return "filtered"
        if metadata.num_delivered > sub.max_deliveries:
            claim = await self.dedup.begin(sub.name, event.id)
            if claim is None:
                self.stats.duplicates += 1
                return "duplicate"
            await claim.abort()
            return await self._dead_letter(
                message, f"delivered {metadata.num_delivered} times without completing", 0
            )
        attempt = 0
        while True:
            attempt += 1
            claim = await self.dedup.begin(sub.name, event.id)
            if claim is None:
                self.stats.duplicates += 1
                return "duplicate"
            delivery = Delivery(
                event,
                message.data,
                message.subject,
                metadata.sequence.stream,
                metadata.num_delivered,
                attempt,
                claim.conn,
            )
            try:
                await self.handler(delivery)
            except Exception as exc:  # noqa: BLE001 - any handler failure is retried, then dead-lettered
                await claim.abort()
                if attempt >= sub.max_attempts:
                    return await self._dead_letter(message, f"{type(exc).__name__}: {exc}", attempt)
                self.stats.retries += 1
                log.info(
                    "consumer %s: handler failed on %s (attempt %d): %s",
                    sub.name,
                    event.id,
                    attempt,
                    exc,
                )
                await asyncio.sleep(
                    min(sub.retry_backoff * 2 ** (attempt - 1), sub.retry_backoff_max)
                )
                continue
            except BaseException:
                await claim.abort()
                raise
            await claim.commit()
            self.stats.handled += 1
            return "handled"

    async def _dead_letter(self, message: Msg, reason: str, attempts: int) -> Outcome:
        sub = self.subscription
        seq = message.metadata.sequence.stream
        headers = {k: v for k, v in (message.headers or {}).items() if k.lower() not in _NOT_COPIED}
        event_id = (message.headers or {}).get("ce-id") or f"seq-{seq}"
        headers.update(
            {
                "Nats-Msg-Id": f"{sub.name}:{event_id}",
                DLQ_REASON: percent_encode(reason[:_MAX_REASON]),
                DLQ_CONSUMER: sub.name,
                DLQ_ATTEMPTS: str(attempts),
                DLQ_STREAM_SEQ: str(seq),
                DLQ_SUBJECT: message.subject,
            }
        )
        await self.nc.jetstream(timeout=10).publish(
            sub.dlq_subject, message.data, headers=headers, stream=sub.dlq_stream
        )
        self.stats.dead_lettered += 1
        log.error(
            "consumer %s: dead-lettered stream seq %d to %s: %s",
            sub.name,
            seq,
            sub.dlq_subject,
            reason,
        )
        return "dead_lettered"

    async def _keep_alive(self, messages: list[Msg]) -> None:
        """Tell the server the batch is still being worked on, so a slow handler does not
        make it redeliver (and reorder) what this session holds."""
        while True:
            await asyncio.sleep(self.subscription.ack_wait / 3)
            for message in messages:
                with contextlib.suppress(nats.errors.Error):
                    await message.in_progress()

    # ------------------------------------------------------------ pulling

    async def _pull(self, batch: int, *, no_wait: bool) -> list[Msg]:
        assert self._inbox is not None
        sub = self.subscription
        try:
            return await pull(
                self.nc,
                self._inbox,
                sub.stream,
                sub.name,
                batch,
                wait=None if no_wait else sub.pull_wait,
            )
        except PullInterruptedError:
            await self._lost_pull()
            raise

    async def _lost_pull(self) -> None:
        self._ready = False
        with contextlib.suppress(nats.errors.Error):
            await self._reset_inbox()

    async def _reset_inbox(self) -> None:
        if self._inbox is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._inbox.unsubscribe()
        self._inbox = await self.nc.subscribe(self.nc.new_inbox())

    async def _recover(self) -> None:
        """If a crashed session left deliveries unacknowledged, wait until the server puts
        them up for redelivery: it then hands them out before anything newer."""
        info = await self.nc.jsm(timeout=10).consumer_info(
            self.subscription.stream, self.subscription.name
        )
        if info.num_ack_pending:
            self.stats.recoveries += 1
            log.info(
                "consumer %s: %d deliveries outstanding from an earlier session; waiting %.1f s for "
                "their redelivery",
                self.subscription.name,
                info.num_ack_pending,
                self.subscription.ack_wait,
            )
            await asyncio.sleep(self.subscription.ack_wait + 0.5)


async def pull(
    nc: NatsClient,
    inbox: NatsSubscription,
    stream: str,
    consumer: str,
    batch: int,
    *,
    wait: float | None,
) -> list[Msg]:
    """One pull request for up to ``batch`` messages, read until the server ends it.

    ``wait=None`` takes only what is available now; otherwise the server holds the request
    up to ``wait`` seconds for messages to arrive. Reading to the server's end of the
    request (``batch`` messages, or a 404/408 status) means nothing can arrive for it
    later, where it would sit unseen while newer events are handled and acknowledged.
    Raises PullInterruptedError when the end never came; discard ``inbox`` then.
    """
    request: dict[str, object] = {"batch": batch}
    if wait is None:
        request["no_wait"] = True
    else:
        request["expires"] = int(wait * 1e9)
    await nc.publish(
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        json.dumps(request).encode(),
        reply=inbox.subject,
    )
    messages: list[Msg] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (wait or 0.0) + 5.0
    while len(messages) < batch:
        try:
            message = await inbox.next_msg(timeout=max(0.01, deadline - loop.time()))
        except (nats.errors.TimeoutError, TimeoutError):
            raise PullInterruptedError("the server did not end a pull request in time") from None
        status = (message.headers or {}).get("Status")
        if status is None:
            messages.append(message)
        elif status in ("404", "408"):  # no messages / request expired: it has ended
            break
        elif status != "100":  # 409: consumer deleted, leadership change, limits...
            description = (message.headers or {}).get("Description", "")
            raise PullInterruptedError(f"pull ended with {status} {description}")
    return messages


__all__ = [
    "Claim",
    "ConsumerStats",
    "DedupStore",
    "Delivery",
    "EventConsumer",
    "FileDedup",
    "Handler",
    "MemoryDedup",
    "PostgresDedup",
    "PullInterruptedError",
    "Subscription",
    "model_of",
    "pull",
]
