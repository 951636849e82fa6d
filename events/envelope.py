"""The envelope that wraps every stored event, and its canonical encoding. Pure.

The canonical form is msgspec JSON with keys sorted, UTC datetimes and the event data
embedded verbatim. These are the bytes the store keeps and hashes: re-encoding a decoded
envelope gives the same bytes, so a verifier can recompute every hash from storage alone.
"""

from __future__ import annotations

import hashlib
from uuid import UUID

import msgspec

from events.base import UtcDateTime

_encoder = msgspec.json.Encoder(order="sorted")
_decoder: msgspec.json.Decoder[Envelope]

ZERO_HASH = bytes(32)


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """Who did what to which stream, when, and why; ``data`` holds the event's own fields."""

    event_id: UUID
    stream_id: str
    stream_position: int
    event_type: str
    schema_version: int
    occurred_at: UtcDateTime
    actor: str
    correlation_id: UUID | None = None
    causation_id: UUID | None = None
    data: msgspec.Raw


def encode_canonical(value: object) -> bytes:
    """Encode any msgspec-encodable value in the canonical (key-sorted) JSON form."""
    return _encoder.encode(value)


def encode_envelope(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode_envelope(raw: bytes) -> Envelope:
    return _decoder.decode(raw)


def leaf_hash(envelope_bytes: bytes) -> bytes:
    """Hash of one stored envelope, domain-separated from chain links (RFC 6962 style)."""
    return hashlib.sha256(b"\x00" + envelope_bytes).digest()


def stream_link(previous: bytes, envelope_bytes: bytes) -> bytes:
    """Per-stream chain: each event's hash covers its bytes and every earlier event's."""
    return hashlib.sha256(b"\x01" + previous + leaf_hash(envelope_bytes)).digest()


def log_link(previous: bytes, log_position: int, stream_hash: bytes) -> bytes:
    """Global chain over the sealed log: binds each position to its event's stream hash."""
    return hashlib.sha256(
        b"\x02" + previous + log_position.to_bytes(8, "big", signed=True) + stream_hash
    ).digest()


_decoder = msgspec.json.Decoder(Envelope)
