"""The consumer kit's forgery check: every delivered event must extend the registry's hash
chains as verified from the stream's first event. I/O: NATS (reads the stream).

Each message is checked against the chains recomputed so far: its envelope agrees with its
headers; its stream position follows the stream's last verified event; its stream hash
``H(0x01 || previous || H(0x00 || payload))`` and then its log hash
``H(0x02 || previous || position || stream hash)`` give exactly the published log hash;
and its log position is the next one. A message that passes becomes part of the verified
chain. A message that fails is reported (the kit dead-letters it) and the chain does not
move, so the genuine events after it still verify.

A consumer that filters by event type, or resumes mid-stream after a restart, is not
delivered every event. Before checking a delivery, the check reads the messages it was not
delivered, up to that one, directly from the stream (``get_msg``) and feeds them in. So
it always verifies from the stream's first event. Starting a consumer therefore costs one
read of the stream. A stream whose first events were dropped (an age or size limit)
cannot be verified; use ``Subscription(verify_chain=False)`` for it.

A copy of an already verified event (a redelivery, or a re-send beyond the duplicate
window) is accepted when it is byte-identical to what was verified at its position.
"""

from __future__ import annotations

from collections import OrderedDict

import msgspec
import nats.js.errors
from nats.aio.client import Client as NatsClient

from events.envelope import ZERO_HASH, decode_envelope, leaf_hash, log_link, stream_link
from service.publication.cloudevents import CloudEventError, EventHeaders, decode_headers

_REMEMBERED = 100_000  # verified positions whose content a late copy is compared with


class ChainCheck:
    def __init__(self, nc: NatsClient, stream: str) -> None:
        self.nc = nc
        self.stream = stream
        self.log_position = 0
        self.log_hash = ZERO_HASH
        self._streams: dict[str, tuple[int, bytes]] = {}
        self._seen: OrderedDict[int, bytes] = OrderedDict()
        self._fed_seq = 0  # every stream message up to this sequence was fed in

    async def check(self, stream_seq: int, event: EventHeaders, payload: bytes) -> str | None:
        """None when the event extends (or repeats) the verified chain; else why it does not."""
        if stream_seq > self._fed_seq + 1:
            await self._catch_up(stream_seq - 1)
        problem = self._feed(event, payload)
        self._fed_seq = max(self._fed_seq, stream_seq)
        return problem

    async def _catch_up(self, upto: int) -> None:
        """Feed in the messages this consumer was not delivered, in stream order."""
        jsm = self.nc.jsm(timeout=10)
        for seq in range(self._fed_seq + 1, upto + 1):
            try:
                msg = await jsm.get_msg(self.stream, seq=seq)
            except nats.js.errors.NotFoundError:
                continue
            try:
                event = decode_headers(msg.headers)
            except CloudEventError:
                continue  # not an event: never part of the chain
            # A forgery among them is simply not part of the chain.
            self._feed(event, msg.data or b"")
            self._fed_seq = seq
        self._fed_seq = max(self._fed_seq, upto)

    def _feed(self, event: EventHeaders, payload: bytes) -> str | None:
        position = event.log_position
        fingerprint = event.log_hash + leaf_hash(payload)
        if position <= self.log_position:
            if self._seen.get(position) == fingerprint:
                return None
            return f"log position {position} is already verified with other content"
        if position != self.log_position + 1:
            return f"log position {position} does not follow the verified {self.log_position}"
        problem = self._envelope_problem(event, payload)
        if problem is not None:
            return problem
        envelope = decode_envelope(payload)
        _, previous = self._streams.get(envelope.stream_id, (0, ZERO_HASH))
        stream_hash = stream_link(previous, payload)
        log_hash = log_link(self.log_hash, position, stream_hash)
        if log_hash != event.log_hash:
            return (
                f"the hash chains give {log_hash.hex()} at log position {position}, "
                f"the message says {event.log_hash.hex()}"
            )
        self._streams[envelope.stream_id] = (envelope.stream_position, stream_hash)
        self.log_position, self.log_hash = position, log_hash
        self._seen[position] = fingerprint
        if len(self._seen) > _REMEMBERED:
            self._seen.popitem(last=False)
        return None

    def _envelope_problem(self, event: EventHeaders, payload: bytes) -> str | None:
        try:
            envelope = decode_envelope(payload)
        except msgspec.DecodeError as exc:
            return f"the payload is not an envelope: {exc}"
        if (envelope.event_id, envelope.event_type, envelope.stream_id) != (
            event.id,
            event.type,
            event.subject,
        ):
            return "the headers name another event than the payload"
        expected = self._streams.get(envelope.stream_id, (0, ZERO_HASH))[0] + 1
        if envelope.stream_position != expected or event.stream_position != expected:
            return (
                f"stream {envelope.stream_id} position {envelope.stream_position} does not "
                f"follow the verified {expected - 1}"
            )
        return None
