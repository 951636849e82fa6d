"""The relay: publishes the sealed global log to NATS JetStream, in order, losing nothing. I/O.

The event log is the outbox. The relay reads ``event_log`` after its checkpoint, publishes
each event's stored envelope bytes on ``<prefix>.<event_type>`` with ``Nats-Msg-Id =
event_id`` and CloudEvents headers (``service.publication.cloudevents``), and moves its checkpoint in
Postgres over the contiguous prefix of acknowledged publishes. Guarantees, each proven in
tests/integration/test_relay*.py:

- **Nothing lost.** The checkpoint only ever covers events JetStream acknowledged. A crash
  anywhere (before publish, after publish before the ack, after the ack before the
  checkpoint) or NATS being away means republishing from the checkpoint on restart.
- **No duplicates in the stream.** Re-sent events within the stream's duplicate window are
  dropped by JetStream (``PubAck.duplicate``). Beyond the window the fence below refuses
  them, and the relay skips ahead to the stream's tail instead of storing copies.
- **Log order, even when pipelining.** Every publish carries ``Nats-Expected-Last-Msg-Id``
  = the previous event's id, so the server stores event p only right after event p-1: a
  lost or failed publish can never let later events overtake it (a gap is refused, then
  republished in order). Unlike expected-sequence headers this check runs *after*
  de-duplication on single servers and clusters alike, so retries stay safe.
- **One writer.** One relay per (schema, stream) leads (``eventlog.leadership``); others
  are hot standbys. The checkpoint moves only by compare-and-set, so even two relays that
  both believe they lead cannot move it past each other, and since both publish the same
  ids in the same fenced order the stream cannot interleave.
- **Never stalls silently.** It wakes on the sealer's NOTIFY and polls as a fallback, so a
  lost LISTEN connection only slows it to the poll interval; NATS failures back off
  exponentially, reconnect and catch up.

Before publishing, the relay checks that the stream's last message is this registry's
event at that log position: a stream written by another registry, or ahead of a database
restored from an old backup, stops publication with an error instead of corrupting either.
A stream that lost its tail (or was recreated) is refilled from where it ends; a stream
that is gone (deleted, or lost with a wiped NATS store) is created again and refilled from
the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import PubAck
from nats.js.client import JetStreamContext

from eventlog.db import connect as db_connect
from eventlog.db import lock_key
from eventlog.leadership import Leadership, Term
from eventlog.listener import Listener
from eventlog.sealer import sealed_channel
from eventlog.waiting import sleep_or_stop, wake_or_stop
from events.envelope import decode_envelope
from service.publication.cloudevents import LOG_POSITION, MSG_ID, encode_headers, subject_for
from service.publication.jetstream import StreamConfigError, StreamSpec, ensure_stream
from service.settings import Settings

log = logging.getLogger(__name__)

EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
EXPECTED_STREAM = "Nats-Expected-Stream"
_WRONG_LAST_MSG_ID = 10070

_READ = """
SELECT l.log_position, l.log_hash, e.envelope
  FROM event_log l JOIN events e ON e.seq = l.seq
 WHERE l.log_position > $1
 ORDER BY l.log_position
 LIMIT $2
"""
_EVENT_ID_AT = """
SELECT e.event_id FROM event_log l JOIN events e ON e.seq = l.seq WHERE l.log_position = $1
"""
_ADVANCE = """
UPDATE publication_checkpoints
   SET log_position = $3, nats_stream_seq = coalesce($4, nats_stream_seq), updated_at = statement_timestamp()
 WHERE publisher = $1 AND log_position = $2
"""

NatsConnect = Callable[[], Awaitable[NatsClient]]


class PublishError(RuntimeError):
    """NATS did not acknowledge a publish (down, timed out, refused); retried after a back-off."""


class StreamMismatchError(RuntimeError):
    """The stream's tail is not this registry's log; publishing would corrupt one of them."""


class CheckpointMovedError(RuntimeError):
    """Another relay moved the checkpoint: this one is not (or no longer) the leader."""


@dataclass(frozen=True, slots=True)
class RelayConfig:
    schema: str
    stream: StreamSpec = field(default_factory=StreamSpec)
    source: str = "/modelreg"
    batch_size: int = 1000
    # Publishes in flight; bounded so a slow server holds at most this many unacked.
    window: int = 1000
    ack_timeout: float = 5.0
    poll_interval: float = 0.5
    standby_interval: float = 1.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    # Create/repair the stream on each (re)connection; off when an operator owns it.
    provision: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> RelayConfig:
        return cls(
            schema=settings.db_schema,
            stream=StreamSpec.from_settings(settings),
            source=settings.event_source,
            batch_size=settings.relay_batch_size,
            window=settings.relay_window,
            ack_timeout=settings.relay_ack_timeout,
            poll_interval=settings.worker_poll_interval,
            backoff_max=settings.relay_backoff_max,
        )

    @property
    def publisher(self) -> str:
        """The checkpoint's key: per NATS stream, so two streams never share a position."""
        return f"nats:{self.stream.name}"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event as it is published."""

    log_position: int
    event_id: UUID
    subject: str
    payload: bytes
    headers: dict[str, str]


Hook = Callable[[Sequence[Outgoing]], Awaitable[None]]


@dataclass(slots=True)
class RelayHooks:
    """Fault injection for tests: each hook may raise to simulate a crash at that point."""

    before_publish: Hook | None = None
    after_publish_before_ack: Hook | None = None
    after_ack_before_checkpoint: Hook | None = None
    after_checkpoint: Hook | None = None


@dataclass(slots=True)
class RelayStats:
    published: int = 0  # acknowledged as newly stored
    duplicates: int = 0  # acknowledged as already stored (PubAck.duplicate)
    fast_forwards: int = 0  # skips to the stream tail after the fence refused a re-send
    rewinds: int = 0  # the stream was behind the checkpoint and was refilled
    failures: int = 0  # NATS failures that caused a back-off


@dataclass(slots=True)
class _Cursor:
    position: int  # the checkpoint
    last_event_id: UUID | None  # the event at ``position``: the fence for the next publish
    fence_next: bool = True


def nats_connector(
    servers: str | Sequence[str], *, name: str = "modelreg-relay", connect_timeout: float = 2.0
) -> NatsConnect:
    """A factory for the relay's own NATS connections.

    The client may reconnect briefly on its own (a cluster member going away), then gives
    up; the relay treats a closed connection like any failure: back off, connect anew.
    """
    urls = [servers] if isinstance(servers, str) else list(servers)

    async def connect() -> NatsClient:
        async def quiet(exc: Exception) -> None:
            log.debug("relay NATS: %s", exc)

        client: NatsClient = await nats.connect(
            servers=urls,
            name=name,
            connect_timeout=connect_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=2,
            reconnect_time_wait=0.2,
            error_cb=quiet,
        )
        return client

    return connect


class Relay:
    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        nats_connect: NatsConnect,
        config: RelayConfig,
        *,
        hooks: RelayHooks | None = None,
    ) -> None:
        self._connect = connect
        self._nats_connect = nats_connect
        self.config = config
        self.hooks = hooks or RelayHooks()
        self.channel = sealed_channel(config.schema)
        self.stats = RelayStats()
        self._leadership = Leadership(
            connect,
            lock_key(config.schema, f"relay:{config.stream.name}"),
            role=f"relay {config.stream.name}",
            standby_interval=config.standby_interval,
            # Another relay moved the checkpoint: it leads (or led), so this one stands by.
            stand_down_on=(CheckpointMovedError,),
        )
        self._wake = asyncio.Event()
        self._cursor: _Cursor | None = None
        self._retry_now = False
        self._js: tuple[NatsClient, JetStreamContext] | None = None
        self._listener: Listener | None = None
        # Provisioned once per process, and again whenever the stream seems to be gone; not
        # on every reconnection, where a cluster in an election would only delay recovery.
        self._provisioned = False

    # ------------------------------------------------------------------ public surface

    @property
    def is_leader(self) -> bool:
        return self._leadership.is_leader

    @property
    def position(self) -> int | None:
        """The checkpoint as this relay last knew it (None before it synced)."""
        return None if self._cursor is None else self._cursor.position

    @property
    def listening(self) -> bool:
        return self._listener is not None and self._listener.listening

    def wake(self) -> None:
        """Called when something was sealed, so publication need not wait for the poll."""
        self._wake.set()

    async def publish_once(self, conn: asyncpg.Connection, nc: NatsClient) -> int:
        """Publish up to one batch after the checkpoint; return how many were acknowledged.

        Raises PublishError (after checkpointing the acknowledged prefix) when NATS fails,
        CheckpointMovedError when another relay moved the checkpoint, StreamMismatchError.
        """
        self._retry_now = False
        cursor = self._cursor or await self._sync(conn, nc)
        rows = await conn.fetch(_READ, cursor.position, self.config.batch_size)
        if not rows:
            return 0
        batch = [self._outgoing(row) for row in rows]
        await self._hook(self.hooks.before_publish, batch)
        acks, failure = await self._publish(nc, cursor, batch)
        if acks:
            acked = batch[: len(acks)]
            await self._hook(self.hooks.after_ack_before_checkpoint, acked)
            await self._advance(
                conn, cursor, acked[-1].log_position, acked[-1].event_id, acks[-1].seq
            )
            self.stats.published += sum(1 for a in acks if not a.duplicate)
            self.stats.duplicates += sum(1 for a in acks if a.duplicate)
            await self._hook(self.hooks.after_checkpoint, acked)
        if failure is not None:
            if _is_fence_refusal(failure):
                await self._after_fence_refusal(conn, nc, batch[len(acks)].log_position)
                return len(acks)
            self._cursor = None  # resync with the stream before the next attempt
            raise PublishError(
                f"publishing log position {batch[len(acks)].log_position}: {_describe(failure)}"
            ) from failure
        return len(acks)

    async def publish_all(self, conn: asyncpg.Connection, nc: NatsClient) -> int:
        """Publish until caught up with the sealed log; return how many were acknowledged."""
        total = 0
        while True:
            published = await self.publish_once(conn, nc)
            total += published
            if not published and not self._retry_now:
                return total

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Lead when the role is free, stand by otherwise; return when ``stop`` is set."""
        await self._leadership.run(self._lead, stop or asyncio.Event())

    # ------------------------------------------------------------------ publishing

    def _outgoing(self, row: asyncpg.Record) -> Outgoing:
        raw = bytes(row["envelope"])
        envelope = decode_envelope(raw)
        headers = encode_headers(
            envelope,
            source=self.config.source,
            log_position=row["log_position"],
            log_hash=bytes(row["log_hash"]),
        )
        headers[EXPECTED_STREAM] = self.config.stream.name
        return Outgoing(
            log_position=row["log_position"],
            event_id=envelope.event_id,
            subject=subject_for(self.config.stream.subject_prefix, envelope.event_type),
            payload=raw,
            headers=headers,
        )

    async def _publish(
        self, nc: NatsClient, cursor: _Cursor, batch: list[Outgoing]
    ) -> tuple[list[PubAck], BaseException | None]:
        """Pipeline the batch; return the acks of its contiguous acknowledged prefix, and
        the failure that ended it, if any."""
        js = self._jetstream(nc)
        loop = asyncio.get_running_loop()
        timeout = self.config.ack_timeout
        pending: deque[tuple[asyncio.Future[PubAck], float]] = deque()
        acks: list[PubAck] = []
        previous = cursor.last_event_id if cursor.fence_next else None
        try:
            for out in batch:
                while len(pending) >= self.config.window:
                    acks.append(await _settle(*pending.popleft(), loop))
                headers = out.headers  # built for this attempt only; the fence is per attempt
                if previous is not None:
                    headers[EXPECTED_LAST_MSG_ID] = str(previous)
                else:
                    headers.pop(EXPECTED_LAST_MSG_ID, None)
                # No wait_stall: the window above keeps us under the client's bound, and a
                # stall timeout would cost an event-loop round trip (and a socket write) per message.
                future = await js.publish_async(out.subject, out.payload, headers=headers)
                pending.append((future, loop.time() + timeout))
                previous = out.event_id
            await self._hook(self.hooks.after_publish_before_ack, batch)
            while pending:
                acks.append(await _settle(*pending.popleft(), loop))
        except (nats.errors.Error, OSError, TimeoutError, PublishError) as exc:
            return acks, exc
        finally:
            for future, _ in pending:
                future.cancel()  # frees its slot in the client's pending-publish bound
        return acks, None

    def _jetstream(self, nc: NatsClient) -> JetStreamContext:
        if self._js is None or self._js[0] is not nc:
            self._js = (
                nc,
                nc.jetstream(
                    timeout=self.config.ack_timeout,
                    publish_async_max_pending=self.config.window + 1,
                ),
            )
        return self._js[1]

    async def _hook(self, hook: Hook | None, batch: Sequence[Outgoing]) -> None:
        if hook is not None:
            await hook(batch)

    # ------------------------------------------------------------------ checkpoint

    async def _sync(self, conn: asyncpg.Connection, nc: NatsClient) -> _Cursor:
        """Load the checkpoint and reconcile it with the stream's tail."""
        cursor, _ = await self._reconcile(conn, nc)
        return cursor

    async def _reconcile(self, conn: asyncpg.Connection, nc: NatsClient) -> tuple[_Cursor, int]:
        publisher = self.config.publisher
        await conn.execute(
            "INSERT INTO publication_checkpoints (publisher) VALUES ($1) ON CONFLICT DO NOTHING",
            publisher,
        )
        position: int = await conn.fetchval(
            "SELECT log_position FROM publication_checkpoints WHERE publisher = $1", publisher
        )
        self._cursor = None
        cursor = _Cursor(position, await self._event_id_at(conn, position))
        tail = await self._tail(conn, nc)
        if tail < position:
            # The stream lost its tail (or was recreated): refill it from where it ends.
            log.warning(
                "relay: stream %s ends at log position %d, checkpoint says %d; republishing from %d",
                self.config.stream.name,
                tail,
                position,
                tail + 1,
            )
            await self._advance(conn, cursor, tail, await self._event_id_at(conn, tail), None)
            self.stats.rewinds += 1
        elif tail > position and cursor.last_event_id is None:
            # Nothing to fence the first publish with: skip what the stream already holds.
            await self._advance(conn, cursor, tail, await self._event_id_at(conn, tail), None)
            self.stats.fast_forwards += 1
        self._cursor = cursor
        return cursor, tail

    async def _after_fence_refusal(
        self, conn: asyncpg.Connection, nc: NatsClient, refused: int
    ) -> None:
        """The server refused ``refused`` because the stream's last message is not its
        predecessor. Find out where the stream really ends and continue from there."""
        cursor, tail = await self._reconcile(conn, nc)
        if tail >= refused and cursor.position < tail:
            # Stored earlier, and too long ago for de-duplication: skip, never store twice.
            log.info(
                "relay: stream %s already holds up to log position %d; skipping ahead",
                self.config.stream.name,
                tail,
            )
            await self._advance(conn, cursor, tail, await self._event_id_at(conn, tail), None)
            self.stats.fast_forwards += 1
        elif tail == cursor.position:
            # The tail is our predecessor but the server does not know its id (it forgets
            # ids older than the duplicate window on restart): publish the next one unfenced.
            cursor.fence_next = False
        self._retry_now = True

    async def _tail(self, conn: asyncpg.Connection, nc: NatsClient) -> int:
        """The log position of the stream's last message, checked to be ours (0: empty)."""
        name = self.config.stream.name
        jsm = nc.jsm(timeout=self.config.ack_timeout)
        try:
            info = await jsm.stream_info(name)
            last_seq = info.state.last_seq
            if not last_seq or not info.state.messages:
                return 0
            msg = await jsm.get_msg(name, seq=last_seq)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise PublishError(f"reading the tail of stream {name}: {_describe(exc)}") from exc
        headers = {k.lower(): v for k, v in (msg.headers or {}).items()}
        text = headers.get(LOG_POSITION.lower(), "")
        msg_id = headers.get(MSG_ID.lower(), "")
        if not text.isdigit():
            raise StreamMismatchError(
                f"stream {name}'s last message (seq {last_seq}) was not published by a modelreg relay; "
                "only the relay may publish there (check NATS permissions and MODELREG_NATS_STREAM)"
            )
        tail = int(text)
        ours = await self._event_id_at(conn, tail)
        if ours is None or str(ours) != msg_id:
            raise StreamMismatchError(
                f"stream {name} holds event {msg_id} at log position {tail}, but this registry's log "
                f"{'ends before that position' if ours is None else f'has {ours} there'}: the stream belongs to "
                "another registry, or the database was restored from an older backup. Use another "
                "MODELREG_NATS_STREAM, or recreate the stream"
            )
        return tail

    async def _event_id_at(self, conn: asyncpg.Connection, position: int) -> UUID | None:
        if position <= 0:
            return None
        value: UUID | None = await conn.fetchval(_EVENT_ID_AT, position)
        return value

    async def _advance(
        self,
        conn: asyncpg.Connection,
        cursor: _Cursor,
        position: int,
        event_id: UUID | None,
        nats_seq: int | None,
    ) -> None:
        status = await conn.execute(
            _ADVANCE, self.config.publisher, cursor.position, position, nats_seq
        )
        if status != "UPDATE 1":
            self._cursor = None
            raise CheckpointMovedError(
                f"checkpoint {self.config.publisher} moved away from {cursor.position} (another relay is publishing)"
            )
        cursor.position, cursor.last_event_id, cursor.fence_next = position, event_id, True

    # ------------------------------------------------------------------ leadership

    async def _lead(self, term: Term) -> None:
        # Another relay may have led meanwhile: reload the checkpoint before publishing.
        self._cursor = None
        self._listener = Listener(self._connect, self.channel, self.wake)
        try:
            await self._publish_with_retries(term.conn, term.ended)
        finally:
            self._cursor = None
            await self._listener.close()

    async def _publish_with_retries(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        backoff = self.config.backoff_initial
        while not stop.is_set():
            nc: NatsClient | None = None
            try:
                nc = await asyncio.wait_for(
                    self._nats_connect(), timeout=max(5.0, self.config.ack_timeout)
                )
                if self.config.provision and not self._provisioned:
                    # Bounded like a publish: during a cluster election a long wait here
                    # would only delay the retry that succeeds once a leader is back.
                    report = await ensure_stream(
                        nc, self.config.stream, timeout=max(2.0, self.config.ack_timeout)
                    )
                    if report.action != "unchanged":
                        log.info(
                            "relay: stream %s %s %s",
                            self.config.stream.name,
                            report.action,
                            "; ".join(report.changes),
                        )
                    self._provisioned = True
                self._cursor = None
                await self._publish_until_stopped(conn, nc, stop)
                return
            except (
                PublishError,
                StreamMismatchError,
                StreamConfigError,
                nats.errors.Error,
                OSError,
                TimeoutError,
            ) as exc:
                self.stats.failures += 1
                if _stream_missing(exc):
                    # Deleted, or lost with the server's store: create it again (when we
                    # provision), and the resync then refills it from the log.
                    self._provisioned = False
                level = (
                    logging.ERROR
                    if isinstance(exc, StreamMismatchError | StreamConfigError)
                    else logging.WARNING
                )
                log.log(level, "relay: %s; retrying in %.1f s", _describe(exc), backoff)
                self._cursor = None
                await sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, self.config.backoff_max)
            finally:
                if nc is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(nc.close(), 5)

    async def _publish_until_stopped(
        self, conn: asyncpg.Connection, nc: NatsClient, stop: asyncio.Event
    ) -> None:
        assert self._listener is not None
        self._listener.start()
        while not stop.is_set():
            # Clear before reading: a wake that lands during the read must not be lost.
            self._wake.clear()
            if await self.publish_once(conn, nc) or self._retry_now:
                continue
            if nc.is_closed:
                raise PublishError("NATS connection closed")
            await wake_or_stop(self._wake, stop, self.config.poll_interval)


async def _settle(
    future: asyncio.Future[PubAck], deadline: float, loop: asyncio.AbstractEventLoop
) -> PubAck:
    """The ack of one publish, or raise; ``asyncio.wait`` so a cancelled future is not
    mistaken for the cancellation of this task."""
    if not future.done():
        await asyncio.wait({future}, timeout=max(0.0, deadline - loop.time()))
    if not future.done():
        raise TimeoutError("no PubAck in time")
    if future.cancelled():
        raise nats.errors.ConnectionClosedError
    exc = future.exception()
    if exc is not None:
        raise exc if isinstance(exc, nats.errors.Error | OSError) else PublishError(_describe(exc))
    return future.result()


_STREAM_NOT_FOUND = 10059


def _stream_missing(exc: BaseException) -> bool:
    """A publish that no stream captured, or a stream lookup answered "stream not found"
    (reading the tail at resync), anywhere in the cause chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, nats.js.errors.NoStreamResponseError):
            return True
        if isinstance(seen, nats.js.errors.NotFoundError) and seen.err_code in (
            _STREAM_NOT_FOUND,
            None,
        ):
            return True
        seen = seen.__cause__
    return False


def _is_fence_refusal(exc: BaseException) -> bool:
    return isinstance(exc, nats.js.errors.APIError) and exc.err_code == _WRONG_LAST_MSG_ID


def _describe(exc: BaseException) -> str:
    if isinstance(exc, nats.js.errors.APIError):
        return f"{type(exc).__name__} {exc.err_code}: {exc.description}"
    return str(exc) or type(exc).__name__


def relay_for(settings: Settings, database_url: str, nats_url: str) -> Relay:
    """The relay a registry process runs: its own connections as the application role,
    its own NATS connections (``nats_url`` may list several servers, comma-separated).
    Run it as a background worker: ``await relay.run()``, cancelled at shutdown."""

    async def connect_db() -> asyncpg.Connection:
        return await db_connect(
            database_url,
            schema=settings.db_schema,
            app_role=settings.db_app_role,
            name="modelreg-relay",
        )

    servers = [url.strip() for url in nats_url.split(",") if url.strip()]
    return Relay(connect_db, nats_connector(servers), RelayConfig.from_settings(settings))


async def publication_lag(
    conn: asyncpg.Connection | asyncpg.Pool, stream: str = "MODELREG_EVENTS"
) -> int:
    """Sealed events not yet acknowledged by the stream: for readiness and alerts."""
    value: int = await conn.fetchval(
        "SELECT s.last_log_position - coalesce((SELECT log_position FROM publication_checkpoints"
        " WHERE publisher = $1), 0) FROM sealer_state s WHERE s.id = 1",
        f"nats:{stream}",
    )
    return value
