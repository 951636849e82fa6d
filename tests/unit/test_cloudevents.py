"""CloudEvents binary-mode headers: percent-encoding per the NATS binding, round trips,
lexicographic sequences, and subjects built only from safe event-type tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID, uuid4

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.envelope import Envelope
from service.publication.cloudevents import (
    CloudEventError,
    decode_headers,
    encode_headers,
    format_sequence,
    percent_decode,
    percent_encode,
    subject_for,
    validate_event_type,
)


def envelope(**overrides: object) -> Envelope:
    fields: dict[str, object] = {
        "event_id": UUID("0193e0a4-0000-7000-8000-00000000abcd"),
        "stream_id": "model:01J9",
        "stream_position": 3,
        "event_type": "model.version_registered",
        "schema_version": 2,
        "occurred_at": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "actor": "alice",
        "data": msgspec.Raw(b"{}"),
    }
    fields.update(overrides)
    return Envelope(**fields)  # type: ignore[arg-type]


def test_the_binding_examples_are_encoded_as_specified() -> None:
    assert percent_encode("Euro € 😀") == "Euro%20%E2%82%AC%20%F0%9F%98%80"
    assert percent_encode('a "quoted" 100%') == "a%20%22quoted%22%20100%25"
    assert percent_encode("/modelreg/prod:x=1&y") == "/modelreg/prod:x=1&y"  # printable ASCII stays
    assert percent_encode("tab\there\r\n") == "tab%09here%0D%0A"


@given(st.text())
def test_any_text_round_trips_through_percent_encoding_as_printable_ascii(value: str) -> None:
    encoded = percent_encode(value)
    assert all(0x21 <= ord(c) <= 0x7E for c in encoded) and '"' not in encoded
    assert percent_decode(encoded) == value


@pytest.mark.parametrize("bad", ["%", "%4", "%ZZ", "a%E2%82", "%FF"])
def test_malformed_percent_encoding_is_refused(bad: str) -> None:
    with pytest.raises(CloudEventError):
        percent_decode(bad)


def test_headers_round_trip_including_non_ascii_and_extensions() -> None:
    correlation, causation = uuid4(), uuid4()
    original = envelope(
        stream_id="model:modèle 1 “x”", correlation_id=correlation, causation_id=causation
    )
    headers = encode_headers(
        original, source="/régistre prod", log_position=42, log_hash=b"\x01" * 32
    )

    assert headers["Nats-Msg-Id"] == headers["ce-id"] == str(original.event_id)
    assert (
        headers["ce-specversion"] == "1.0" and headers["ce-datacontenttype"] == "application/json"
    )
    assert headers["ce-type"] == "model.version_registered"
    assert headers["ce-time"] == "2026-01-02T03:04:05.678000Z"
    assert headers["ce-sequence"] == "00000000000000000042"
    assert all(0x21 <= ord(c) <= 0x7E for value in headers.values() for c in value)

    decoded = decode_headers(
        {k.upper(): v for k, v in headers.items()}
    )  # names are case-insensitive
    assert decoded.id == original.event_id and decoded.subject == "model:modèle 1 “x”"
    assert decoded.source == "/régistre prod" and decoded.type == original.event_type
    assert decoded.time == original.occurred_at and decoded.log_position == 42
    assert decoded.stream_position == 3 and decoded.schema_version == 2
    assert decoded.log_hash == b"\x01" * 32
    assert (decoded.correlation_id, decoded.causation_id) == (correlation, causation)


def test_ce_time_is_utc_whatever_the_offset_it_was_recorded_with() -> None:
    moment = datetime(2026, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    headers = encode_headers(
        envelope(occurred_at=moment), source="/s", log_position=1, log_hash=bytes(32)
    )
    assert headers["ce-time"] == "2026-01-02T03:04:05Z"


@given(st.lists(st.integers(min_value=0, max_value=2**63 - 1), min_size=2))
def test_ce_sequence_sorts_lexicographically_as_the_positions_sort_numerically(
    positions: list[int],
) -> None:
    assert sorted(format_sequence(p) for p in positions) == [
        format_sequence(p) for p in sorted(positions)
    ]


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("ce-id", "ce-id is missing"),
        ("ce-specversion", "ce-specversion is missing"),
        ("Modelreg-Log-Hash", "Modelreg-Log-Hash is missing"),
    ],
)
def test_missing_required_headers_are_named(missing: str, message: str) -> None:
    headers = encode_headers(envelope(), source="/s", log_position=1, log_hash=bytes(32))
    del headers[missing]
    with pytest.raises(CloudEventError, match=message):
        decode_headers(headers)


def test_inconsistent_or_malformed_headers_are_refused() -> None:
    good = encode_headers(envelope(), source="/s", log_position=7, log_hash=bytes(32))
    for change in (
        {"ce-sequence": format_sequence(8)},
        {"ce-specversion": "0.3"},
        {"ce-id": "nope"},
        {"ce-time": "yesterday"},
        {"ce-time": "2026-01-01T00:00:00"},
        {"Modelreg-Log-Position": "-1"},
        {"Modelreg-Log-Hash": "xyz"},
        {"ce-type": "bad type"},
    ):
        with pytest.raises(CloudEventError):
            decode_headers({**good, **change})
    with pytest.raises(CloudEventError):
        decode_headers(None)


def test_subjects_are_built_only_from_safe_tokens() -> None:
    assert (
        subject_for("modelreg.events", "model.stage_transitioned")
        == "modelreg.events.model.stage_transitioned"
    )
    for bad in [
        "",
        "model.",
        ".model",
        "model..x",
        "model.*",
        "model.>",
        "a b",
        "modèle",
        "x\r\ny",
    ]:
        with pytest.raises(CloudEventError):
            validate_event_type(bad)
    with pytest.raises(CloudEventError):
        subject_for("modelreg.>", "model.registered")
    with pytest.raises(CloudEventError):
        encode_headers(
            envelope(event_type="model.*"), source="/s", log_position=1, log_hash=bytes(32)
        )
