"""The checkpointer: signs the sealed log's head now and then and puts the signature where
the database cannot reach it. I/O: Postgres, files, NATS.

Every ``every_events`` sealed events, or every ``interval`` seconds while the log grows, the
leading checkpointer (one per schema, ``eventlog.leadership``) reads the sealer's head
(position and log hash), signs it with the Ed25519 key from its key file
(``eventlog.checkpoints``), writes the checkpoint to a file in its directory, and publishes
it to a JetStream stream whose configuration denies delete and purge. An auditor later
proves with the public key alone that the log still extends every checkpoint
(``modelreg audit verify --checkpoints``).

The file is written before the publish and is the record of what was signed; NATS being
away only delays publication (the unpublished checkpoints wait in memory and are sent,
in order, once it is back). A checkpoint changes nothing in the database, so two
checkpointers that briefly both lead only sign the same truth twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NatsClient

from eventlog.checkpoints import (
    Checkpoint,
    CheckpointError,
    decode_checkpoint,
    encode_checkpoint,
    latest,
    load_or_create_private_key,
    read_checkpoint_dir,
    sign_checkpoint,
    write_checkpoint_file,
)
from eventlog.db import lock_key
from eventlog.leadership import Connect, Leadership, Term
from eventlog.waiting import sleep_or_stop
from service.publication.jetstream import StreamSpec, ensure_stream
from service.publication.relay import NatsConnect, nats_connector
from service.settings import Settings

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
_UNPUBLISHED_KEPT = 10_000  # beyond this, the oldest wait in the files only


@dataclass(frozen=True, slots=True)
class CheckpointConfig:
    schema: str
    key_path: Path
    directory: Path
    every_events: int = 1000
    interval: float = 60.0
    stream: StreamSpec = field(
        default_factory=lambda: StreamSpec(
            name="MODELREG_CHECKPOINTS",
            subject_prefix="modelreg.checkpoints",
            description="modelreg signed checkpoints of the event log (Ed25519)",
        )
    )
    poll_interval: float = 0.5
    standby_interval: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> CheckpointConfig:
        return cls(
            schema=settings.db_schema,
            key_path=settings.checkpoint_key_path,
            directory=settings.checkpoint_directory,
            every_events=settings.checkpoint_every_events,
            interval=settings.checkpoint_interval,
            stream=StreamSpec(
                name=settings.checkpoint_stream,
                subject_prefix=settings.checkpoint_subject_prefix,
                replicas=settings.nats_replicas,
                description="modelreg signed checkpoints of the event log (Ed25519)",
            ),
            poll_interval=settings.worker_poll_interval,
        )

    @property
    def subject(self) -> str:
        return f"{self.stream.subject_prefix}.signed"


class Checkpointer:
    def __init__(
        self, connect: Connect, nats_connect: NatsConnect | None, config: CheckpointConfig
    ) -> None:
        self._nats_connect = nats_connect
        self.config = config
        self._leadership = Leadership(
            connect,
            lock_key(config.schema, "checkpointer"),
            role="checkpointer",
            standby_interval=config.standby_interval,
        )
        self._key: Ed25519PrivateKey | None = None
        self._last: Checkpoint | None = None
        self._unpublished: deque[Checkpoint] = deque(maxlen=_UNPUBLISHED_KEPT)
        self._nats: NatsClient | None = None
        self._provisioned = False

    @property
    def last(self) -> Checkpoint | None:
        return self._last

    @property
    def unpublished(self) -> int:
        return len(self._unpublished)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Lead when the role is free, stand by otherwise; return when ``stop`` is set."""
        try:
            await self._leadership.run(self._lead, stop or asyncio.Event())
        finally:
            await self._close_nats()

    async def close(self) -> None:
        """Close the NATS connection ``publish_pending`` opened (``run`` closes its own)."""
        await self._close_nats()

    async def checkpoint_once(
        self, conn: asyncpg.Connection, *, now: datetime | None = None
    ) -> Checkpoint | None:
        """Sign and write the head if a checkpoint is due; return it (None if not due)."""
        key = self._signing_key()
        row = await conn.fetchrow(
            "SELECT last_log_position, last_log_hash FROM sealer_state WHERE id = 1"
        )
        assert row is not None
        position, log_hash = row["last_log_position"], bytes(row["last_log_hash"])
        moment = now or datetime.now(UTC)
        if not self._due(position, moment):
            return None
        checkpoint = sign_checkpoint(key, position, log_hash, moment)
        write_checkpoint_file(self.config.directory, checkpoint)
        self._last = checkpoint
        self._unpublished.append(checkpoint)
        log.info("checkpointer: signed log position %d", position)
        return checkpoint

    async def publish_pending(self) -> int:
        """Publish the checkpoints not yet acknowledged, oldest first; return how many were.
        NATS failures are logged and leave the rest for the next call."""
        if not self._unpublished or self._nats_connect is None:
            return 0
        published = 0
        try:
            nc = await self._connected()
            js = nc.jetstream(timeout=5.0)
            while self._unpublished:
                checkpoint = self._unpublished[0]
                await js.publish(
                    self.config.subject,
                    encode_checkpoint(checkpoint),
                    headers={MSG_ID: f"checkpoint-{checkpoint.log_position}"},
                )
                self._unpublished.popleft()
                published += 1
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            if isinstance(exc, nats.js.errors.NoStreamResponseError):
                self._provisioned = False
            log.warning(
                "checkpointer: publishing to %s: %s; %d checkpoint(s) wait",
                self.config.stream.name,
                str(exc) or type(exc).__name__,
                len(self._unpublished),
            )
            await self._close_nats()
        return published

    # ------------------------------------------------------------------ internals

    def _signing_key(self) -> Ed25519PrivateKey:
        if self._key is None:
            self._key = load_or_create_private_key(self.config.key_path)
            # Resume the cadence where the last run left it.
            if self.config.directory.is_dir():
                self._last = latest(read_checkpoint_dir(self.config.directory))
        return self._key

    def _due(self, position: int, now: datetime) -> bool:
        last = self._last
        if position == 0:
            return False
        if last is None:
            return True
        if position <= last.log_position:
            return False
        return (
            position - last.log_position >= self.config.every_events
            or (now - last.time).total_seconds() >= self.config.interval
        )

    async def _connected(self) -> NatsClient:
        assert self._nats_connect is not None
        if self._nats is None or self._nats.is_closed:
            self._nats = await asyncio.wait_for(self._nats_connect(), timeout=5.0)
        if not self._provisioned:
            await ensure_stream(self._nats, self.config.stream, timeout=5.0)
            self._provisioned = True
        return self._nats

    async def _close_nats(self) -> None:
        if self._nats is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nats.close(), 5)
            self._nats = None

    async def _lead(self, term: Term) -> None:
        while not term.ended.is_set():
            await self.checkpoint_once(term.conn)
            await self.publish_pending()
            await sleep_or_stop(term.ended, self.config.poll_interval)


async def read_checkpoint_stream(nc: NatsClient, stream: str) -> list[Checkpoint]:
    """Every checkpoint in the JetStream stream, in stream order."""
    jsm = nc.jsm(timeout=10.0)
    info = await jsm.stream_info(stream)
    found = []
    for seq in range(info.state.first_seq or 1, (info.state.last_seq or 0) + 1):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            msg = await jsm.get_msg(stream, seq=seq)
            try:
                found.append(decode_checkpoint(msg.data or b""))
            except msgspec.DecodeError as exc:
                raise CheckpointError(
                    f"stream {stream} message {seq} is not a checkpoint: {exc}"
                ) from None
    return found


def checkpointer_for(settings: Settings, connect: Connect, nats_url: str) -> Checkpointer:
    """The checkpointer a registry process runs, with its own NATS connections."""
    servers = [url.strip() for url in nats_url.split(",") if url.strip()]
    return Checkpointer(
        connect,
        nats_connector(servers, name="modelreg-checkpointer"),
        CheckpointConfig.from_settings(settings),
    )
