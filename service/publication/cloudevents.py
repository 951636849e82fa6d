"""CloudEvents binary-mode headers for NATS, and the subject scheme. Pure (no I/O).

Every published message carries the stored envelope bytes verbatim as its payload and
describes the event in headers, per the CloudEvents NATS protocol binding (binary mode):

    Nats-Msg-Id              event_id (JetStream de-duplicates on it)
    ce-specversion           1.0
    ce-id                    event_id (the same value: source + id identify the event)
    ce-source                the registry's configured event source, e.g. /modelreg
    ce-type                  the event type, e.g. model.version_registered (no version suffix)
    ce-subject               the registry stream id, e.g. model:01J...
    ce-time                  the envelope's occurred_at, RFC 3339 in UTC
    ce-sequence              the global log position, zero-padded to 20 digits, so that it
                             sorts lexicographically (CloudEvents "sequence" extension)
    ce-datacontenttype       application/json
    ce-correlationid         when the envelope has one ("correlation" extension)
    ce-causationid           when the envelope has one
    Modelreg-Log-Position    the log position in decimal
    Modelreg-Stream-Position the position in the registry stream (ce-subject)
    Modelreg-Schema-Version  the event's schema version
    Modelreg-Log-Hash        the global hash chain value at this position, lowercase hex

``ce-type`` deliberately has no schema-version suffix: a new schema version is the same kind
of fact (old versions are upcast on read), so subscriptions by type keep working across
versions; the version travels in ``Modelreg-Schema-Version`` and in the envelope.

Header values are percent-encoded as the binding requires (space, ``"``, ``%`` and every
character outside U+0021..U+007E, as UTF-8 with upper-case hex), so non-ASCII stream ids and
sources survive any NATS client. Header names are matched case-insensitively on decode.

Subjects are ``<prefix>.<event_type>``: only event types chosen by this code become subject
tokens, never names a user typed, and a type that is not a safe token is refused.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from uuid import UUID

import msgspec

from events.envelope import Envelope

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
SEQUENCE_DIGITS = 20

MSG_ID = "Nats-Msg-Id"
LOG_POSITION = "Modelreg-Log-Position"
STREAM_POSITION = "Modelreg-Stream-Position"
SCHEMA_VERSION = "Modelreg-Schema-Version"
LOG_HASH = "Modelreg-Log-Hash"

_TOKENS = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", re.ASCII)
# Printable ASCII minus the three characters the binding singles out.
_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', "%"}
_NEEDS_ENCODING = re.compile(r"[^\x21\x23-\x24\x26-\x7e]")


class CloudEventError(ValueError):
    """A message's headers are not a valid modelreg CloudEvent; says which header."""


@functools.lru_cache(maxsize=1024)
def validate_event_type(event_type: str) -> str:
    """Return ``event_type`` if it is dot-separated ``[A-Za-z0-9_-]`` tokens, else raise."""
    if not _TOKENS.fullmatch(event_type):
        raise CloudEventError(
            f"event type {event_type!r} is not a safe NATS subject token sequence"
        )
    return event_type


@functools.lru_cache(maxsize=1024)
def subject_for(prefix: str, event_type: str) -> str:
    if not _TOKENS.fullmatch(prefix):
        raise CloudEventError(f"subject prefix {prefix!r} is not a valid NATS subject")
    return f"{prefix}.{validate_event_type(event_type)}"


def stream_subjects(prefix: str) -> list[str]:
    """The subjects a JetStream stream must capture for ``prefix``."""
    if not _TOKENS.fullmatch(prefix):
        raise CloudEventError(f"subject prefix {prefix!r} is not a valid NATS subject")
    return [f"{prefix}.>"]


def percent_encode(value: str) -> str:
    if not _NEEDS_ENCODING.search(value):
        return value
    out: list[str] = []
    for char in value:
        if char in _SAFE:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


def percent_decode(value: str) -> str:
    if "%" not in value:
        return value
    raw = bytearray()
    i = 0
    while i < len(value):
        char = value[i]
        if char == "%":
            pair = value[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in "0123456789abcdefABCDEF" for c in pair):
                raise CloudEventError(f"bad percent-encoding in {value!r}")
            raw.append(int(pair, 16))
            i += 3
        else:
            raw.extend(char.encode("utf-8"))
            i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CloudEventError(f"percent-encoded bytes in {value!r} are not UTF-8") from None


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def format_sequence(log_position: int) -> str:
    return f"{log_position:0{SEQUENCE_DIGITS}d}"


class EventHeaders(msgspec.Struct, frozen=True, kw_only=True):
    """The attributes a message's headers carry, decoded."""

    id: UUID
    source: str
    type: str
    subject: str
    time: datetime
    log_position: int
    stream_position: int
    schema_version: int
    log_hash: bytes
    datacontenttype: str = CONTENT_TYPE
    specversion: str = SPEC_VERSION
    correlation_id: UUID | None = None
    causation_id: UUID | None = None


def encode_headers(
    envelope: Envelope, *, source: str, log_position: int, log_hash: bytes
) -> dict[str, str]:
    """The header block for one published event (``Nats-Msg-Id`` included)."""
    event_id = str(envelope.event_id)
    headers = {
        MSG_ID: event_id,
        "ce-specversion": SPEC_VERSION,
        "ce-id": event_id,
        "ce-source": percent_encode(source),
        "ce-type": validate_event_type(envelope.event_type),
        "ce-subject": percent_encode(envelope.stream_id),
        "ce-time": format_time(envelope.occurred_at),
        "ce-sequence": format_sequence(log_position),
        "ce-datacontenttype": CONTENT_TYPE,
        LOG_POSITION: str(log_position),
        STREAM_POSITION: str(envelope.stream_position),
        SCHEMA_VERSION: str(envelope.schema_version),
        LOG_HASH: log_hash.hex(),
    }
    if envelope.correlation_id is not None:
        headers["ce-correlationid"] = str(envelope.correlation_id)
    if envelope.causation_id is not None:
        headers["ce-causationid"] = str(envelope.causation_id)
    return headers


def decode_headers(headers: Mapping[str, str] | None) -> EventHeaders:
    """Decode and check a message's headers; raise CloudEventError naming a bad header."""
    found = _Headers(headers)
    specversion = found.text("ce-specversion")
    if specversion != SPEC_VERSION:
        raise CloudEventError(f"ce-specversion {specversion!r} is not {SPEC_VERSION}")
    event_id = found.uuid("ce-id")
    sequence = found.integer("ce-sequence")
    log_position = found.integer(LOG_POSITION)
    if sequence != log_position:
        raise CloudEventError(
            f"ce-sequence {sequence} disagrees with {LOG_POSITION} {log_position}"
        )
    time_text, hash_text = found.text("ce-time"), found.text(LOG_HASH)
    moment, log_hash = _parse_time(time_text), _parse_hash(hash_text)
    return EventHeaders(
        id=event_id,
        source=percent_decode(found.text("ce-source")),
        type=validate_event_type(percent_decode(found.text("ce-type"))),
        subject=percent_decode(found.text("ce-subject")),
        time=moment,
        log_position=log_position,
        stream_position=found.integer(STREAM_POSITION),
        schema_version=found.integer(SCHEMA_VERSION),
        log_hash=log_hash,
        datacontenttype=percent_decode(found.text("ce-datacontenttype")),
        specversion=specversion,
        correlation_id=found.optional_uuid("ce-correlationid"),
        causation_id=found.optional_uuid("ce-causationid"),
    )


class _Headers:
    """A message's headers, looked up case-insensitively; each accessor names a bad header."""

    def __init__(self, headers: Mapping[str, str] | None) -> None:
        self._lowered = {k.lower(): v for k, v in (headers or {}).items()}

    def text(self, name: str) -> str:
        value = self._lowered.get(name.lower())
        if value is None or value == "":
            raise CloudEventError(f"header {name} is missing")
        return value

    def integer(self, name: str) -> int:
        text = self.text(name)
        if not text.isdigit():
            raise CloudEventError(f"header {name} is not a non-negative integer: {text!r}")
        return int(text)

    def uuid(self, name: str) -> UUID:
        text = self.text(name)
        try:
            return UUID(text)
        except ValueError:
            raise CloudEventError(f"header {name} is not a UUID: {text!r}") from None

    def optional_uuid(self, name: str) -> UUID | None:
        return self.uuid(name) if self._lowered.get(name.lower()) else None


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CloudEventError(f"ce-time is not RFC 3339: {text!r}") from None
    if moment.tzinfo is None:
        raise CloudEventError("ce-time has no UTC offset")
    return moment.astimezone(UTC)


def _parse_hash(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise CloudEventError(f"{LOG_HASH} is not hex") from None
