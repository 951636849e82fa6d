"""Following the published stream live, and mirroring it to a verified JSON-lines file. I/O.

``follow`` yields events as the relay publishes them (from now, from a log position, or
from the start), optionally filtered by event type. ``Mirror`` appends every event to a
JSON-lines file and verifies, as it goes, everything an auditor can check from the
messages alone:

- log positions are contiguous from 1 (nothing missing, nothing reordered);
- each registry stream's positions are contiguous and its hash chain, recomputed from the
  envelope bytes, links (``stream_link``);
- the global chain recomputed from those stream hashes equals the ``Modelreg-Log-Hash``
  the registry published with each event (``log_link``).

A break stops the mirror with ``ChainError`` naming the log position and what differs;
nothing after it is written. The file is re-verified line by line when the mirror resumes,
so tampering with the file is caught too; a torn last line (a crash mid-write) is cut off
and fetched again. Copies re-sent to the stream beyond its duplicate window are skipped.

Each line: ``{"event": <envelope JSON, verbatim>, "log_hash": hex, "log_position": n,
"nats_seq": n, "stream_hash": hex}`` — the envelope bytes are embedded unchanged, so the
file alone suffices to recompute both chains.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from events.envelope import ZERO_HASH, Envelope, decode_envelope, log_link, stream_link
from service.consumers.kit import PullInterruptedError, pull
from service.publication.cloudevents import LOG_POSITION, EventHeaders, decode_headers, subject_for

_FSYNC_EVERY = 1000


class ChainError(RuntimeError):
    """The published events do not form the registry's verified log; says where and why."""

    def __init__(self, log_position: int, reason: str) -> None:
        super().__init__(f"log position {log_position}: {reason}")
        self.log_position = log_position
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Published:
    """One event as read from the stream."""

    event: EventHeaders
    payload: bytes
    nats_seq: int
    subject: str

    @property
    def envelope(self) -> Envelope:
        return decode_envelope(self.payload)


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a mirror file (``follow --json`` prints the same shape)."""

    log_position: int
    nats_seq: int
    log_hash: str
    stream_hash: str | None = None
    event: msgspec.Raw


_encoder = msgspec.json.Encoder(order="sorted")
_record_decoder = msgspec.json.Decoder(AuditRecord)


def record_of(published: Published, stream_hash: bytes | None = None) -> AuditRecord:
    return AuditRecord(
        log_position=published.event.log_position,
        nats_seq=published.nats_seq,
        log_hash=published.event.log_hash.hex(),
        stream_hash=None if stream_hash is None else stream_hash.hex(),
        event=msgspec.Raw(published.payload),
    )


def encode_record(record: AuditRecord) -> bytes:
    return _encoder.encode(record) + b"\n"


# ---------------------------------------------------------------- reading the stream


async def read_stream(
    nc: NatsClient,
    stream: str,
    *,
    start_seq: int,
    subjects: Sequence[str] = (),
    stop: asyncio.Event | None = None,
    until_seq: int | None = None,
    batch: int = 500,
    wait: float = 1.0,
) -> AsyncIterator[Msg]:
    """Messages from ``start_seq`` on, in stream order, forever (or through ``until_seq``).

    An ephemeral consumer without acks; when it or the connection is lost it is created
    again after the last message seen, so nothing is skipped or repeated.
    """
    next_seq = max(1, start_seq)
    while stop is None or not stop.is_set():
        if until_seq is not None and next_seq > until_seq:
            return
        name = f"audit_{secrets.token_hex(6)}"
        jsm = nc.jsm(timeout=10)
        inbox: NatsSubscription | None = None
        try:
            await jsm.add_consumer(
                stream,
                ConsumerConfig(
                    name=name,
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=next_seq,
                    ack_policy=AckPolicy.NONE,
                    inactive_threshold=60.0,
                    mem_storage=True,
                    num_replicas=1,
                    filter_subjects=list(subjects) if len(subjects) > 1 else None,
                    filter_subject=subjects[0] if len(subjects) == 1 else None,
                ),
            )
            inbox = await nc.subscribe(nc.new_inbox())
            while stop is None or not stop.is_set():
                if until_seq is not None and next_seq > until_seq:
                    return
                # Take what is there; when nothing is, wait on the server for the next one.
                messages = await pull(nc, inbox, stream, name, batch, wait=None)
                if not messages:
                    if until_seq is not None and await _last_seq(nc, stream) < next_seq:
                        return  # nothing more will come up to until_seq
                    messages = await pull(nc, inbox, stream, name, 1, wait=wait)
                for message in messages:
                    seq = message.metadata.sequence.stream
                    if seq < next_seq:
                        continue
                    if until_seq is not None and seq > until_seq:
                        return
                    next_seq = seq + 1
                    yield message
        except (nats.errors.Error, OSError, TimeoutError, PullInterruptedError):
            # A fresh consumer from the last message seen: nothing skipped, nothing repeated.
            await _pause(stop, wait)
        finally:
            if inbox is not None:
                with contextlib.suppress(Exception):
                    await inbox.unsubscribe()
            with contextlib.suppress(Exception):
                await jsm.delete_consumer(stream, name)


async def _last_seq(nc: NatsClient, stream: str) -> int:
    info = await nc.jsm(timeout=10).stream_info(stream)
    return info.state.last_seq or 0


async def seek(nc: NatsClient, stream: str, after_position: int) -> int:
    """The stream sequence of the first event after log position ``after_position``
    (one past the end if there is none). The relay keeps the stream in log order, so this
    is a binary search over ``Modelreg-Log-Position``."""
    jsm = nc.jsm(timeout=10)
    state = (await jsm.stream_info(stream)).state
    low, high = state.first_seq or 1, (state.last_seq or 0) + 1
    while low < high:
        middle = (low + high) // 2
        msg = await jsm.get_msg(stream, seq=middle)
        headers = {k.lower(): v for k, v in (msg.headers or {}).items()}
        if int(headers.get(LOG_POSITION.lower(), "0")) > after_position:
            high = middle
        else:
            low = middle + 1
    return low


def published(message: Msg) -> Published:
    return Published(
        decode_headers(message.headers),
        message.data,
        message.metadata.sequence.stream,
        message.subject,
    )


async def follow(
    nc: NatsClient,
    *,
    stream: str = "MODELREG_EVENTS",
    subject_prefix: str = "modelreg.events",
    since: int | None = None,
    event_types: Sequence[str] = (),
    stop: asyncio.Event | None = None,
) -> AsyncIterator[Published]:
    """Events as they are published: those after log position ``since`` first (``0``: the
    whole history), or only new ones when ``since`` is None."""
    if since is None:
        start = await _last_seq(nc, stream) + 1
    else:
        start = await seek(nc, stream, since)
    subjects = [subject_for(subject_prefix, t) for t in event_types]
    async for message in read_stream(nc, stream, start_seq=start, subjects=subjects, stop=stop):
        yield published(message)


# ---------------------------------------------------------------- verifying the chains


@dataclass(slots=True)
class ChainVerifier:
    """Recomputes both hash chains over events fed in log order."""

    log_position: int = 0
    log_hash: bytes = ZERO_HASH
    streams: dict[str, tuple[int, bytes]] = field(default_factory=dict)

    def check(self, log_position: int, payload: bytes, published_log_hash: bytes) -> bytes:
        """Verify the next event and advance; return its stream hash. Raise ChainError."""
        if log_position != self.log_position + 1:
            raise ChainError(
                log_position,
                f"expected log position {self.log_position + 1} next"
                f"{' (events are missing)' if log_position > self.log_position else ''}",
            )
        try:
            envelope = decode_envelope(payload)
        except msgspec.DecodeError as exc:
            raise ChainError(log_position, f"the payload is not an envelope: {exc}") from None
        position, previous = self.streams.get(envelope.stream_id, (0, ZERO_HASH))
        if envelope.stream_position != position + 1:
            raise ChainError(
                log_position,
                f"stream {envelope.stream_id} jumps from position {position} "
                f"to {envelope.stream_position}",
            )
        stream_hash = stream_link(previous, payload)
        log_hash = log_link(self.log_hash, log_position, stream_hash)
        if log_hash != published_log_hash:
            raise ChainError(
                log_position,
                f"the global chain gives {log_hash.hex()}, the registry "
                f"published {published_log_hash.hex()} (event {envelope.event_id})",
            )
        self.streams[envelope.stream_id] = (envelope.stream_position, stream_hash)
        self.log_position, self.log_hash = log_position, log_hash
        return stream_hash


# ---------------------------------------------------------------- the mirror


class Mirror:
    """An append-only JSON-lines copy of the stream, verified as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.verifier = ChainVerifier()
        self.last_nats_seq = 0
        self.last_event_id: str | None = None
        self._file: IO[bytes] | None = None
        self._unsynced = 0

    def load(self) -> int:
        """Re-verify the existing file; return how many records it holds."""
        if not self.path.exists():
            return 0
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) < len(data):
            with self.path.open("r+b") as f:
                f.truncate(len(complete))
        count = 0
        for number, line in enumerate(complete.splitlines(), start=1):
            try:
                record = _record_decoder.decode(line)
                recorded_hash = bytes.fromhex(record.log_hash)
            except (msgspec.DecodeError, ValueError) as exc:
                raise ChainError(
                    self.verifier.log_position + 1,
                    f"{self.path} line {number} is not a mirror record: {exc}",
                ) from None
            stream_hash = self.verifier.check(
                record.log_position, bytes(record.event), recorded_hash
            )
            if record.stream_hash is not None and record.stream_hash != stream_hash.hex():
                raise ChainError(
                    record.log_position, f"{self.path} line {number} records a wrong stream hash"
                )
            self.last_nats_seq = record.nats_seq
            self.last_event_id = str(decode_envelope(bytes(record.event)).event_id)
            count += 1
        return count

    async def run(
        self,
        nc: NatsClient,
        *,
        stream: str = "MODELREG_EVENTS",
        stop: asyncio.Event | None = None,
        until_caught_up: bool = False,
    ) -> int:
        """Append every new event until ``stop`` (or, with ``until_caught_up``, until the
        stream's end as it was at the start); return how many were appended."""
        self.load()
        start = await self._resume_seq(nc, stream)
        until = await _last_seq(nc, stream) if until_caught_up else None
        appended = 0
        self._file = self.path.open("ab")
        try:
            async for message in read_stream(
                nc, stream, start_seq=start, stop=stop, until_seq=until
            ):
                event = decode_headers(message.headers)
                if event.log_position <= self.verifier.log_position:
                    continue  # a copy re-sent beyond the duplicate window
                if self.verifier.log_position == 0 and event.log_position != 1:
                    raise ChainError(
                        event.log_position,
                        f"stream {stream} no longer starts at log position 1, "
                        "so the chain cannot be verified from its start",
                    )
                stream_hash = self.verifier.check(event.log_position, message.data, event.log_hash)
                record = record_of(
                    Published(
                        event, message.data, message.metadata.sequence.stream, message.subject
                    ),
                    stream_hash,
                )
                self._write(encode_record(record))
                self.last_nats_seq, self.last_event_id = record.nats_seq, str(event.id)
                appended += 1
        finally:
            self.close()
        return appended

    async def _resume_seq(self, nc: NatsClient, stream: str) -> int:
        """After the last mirrored message, if the stream still holds it where we saw it;
        otherwise found again by log position (the stream may have been recreated)."""
        if self.last_nats_seq:
            with contextlib.suppress(nats.js.errors.NotFoundError, nats.js.errors.APIError):
                msg = await nc.jsm(timeout=10).get_msg(stream, seq=self.last_nats_seq)
                if (msg.headers or {}).get("Nats-Msg-Id") == self.last_event_id:
                    return self.last_nats_seq + 1
        return await seek(nc, stream, self.verifier.log_position)

    def _write(self, line: bytes) -> None:
        assert self._file is not None
        self._file.write(line)
        self._file.flush()
        self._unsynced += 1
        if self._unsynced >= _FSYNC_EVERY:
            os.fsync(self._file.fileno())
            self._unsynced = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


async def _pause(stop: asyncio.Event | None, seconds: float) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
