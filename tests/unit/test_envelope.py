"""The canonical envelope: the exact bytes that are stored and hashed."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.base import utc
from events.envelope import (
    ZERO_HASH,
    Envelope,
    decode_envelope,
    encode_canonical,
    encode_envelope,
    leaf_hash,
    log_link,
    stream_link,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def envelope(data: object, **overrides: object) -> Envelope:
    fields: dict[str, object] = {
        "event_id": uuid.UUID(int=7),
        "stream_id": "model:0f",
        "stream_position": 3,
        "event_type": "test.noted",
        "schema_version": 1,
        "occurred_at": datetime(2026, 3, 3, 14, 3, tzinfo=UTC),
        "actor": "alice",
        "data": msgspec.Raw(encode_canonical(data)),
    }
    fields.update(overrides)
    return Envelope(**fields)  # type: ignore[arg-type]


@given(json_values, st.text(min_size=1), st.integers(1, 2**40))
def test_encode_decode_encode_is_byte_identical(data: object, actor: str, position: int) -> None:
    raw = encode_envelope(envelope(data, actor=actor, stream_position=position))
    assert encode_envelope(decode_envelope(raw)) == raw


def test_keys_are_sorted_at_every_level() -> None:
    raw = encode_envelope(envelope({"b": 1, "a": {"z": 1, "y": 2}}))
    assert raw.index(b'"actor"') < raw.index(b'"data"') < raw.index(b'"event_id"')
    assert b'{"a":{"y":2,"z":1},"b":1}' in raw


def test_the_encoded_form_is_pinned() -> None:
    # A msgspec or Python upgrade that changes these bytes would break every stored hash.
    raw = encode_envelope(envelope({"text": "héllo", "n": 1.5}))
    assert raw == (
        b'{"actor":"alice","causation_id":null,"correlation_id":null,"data":{"n":1.5,"text":"h\xc3\xa9llo"},'
        b'"event_id":"00000000-0000-0000-0000-000000000007","event_type":"test.noted","occurred_at":'
        b'"2026-03-03T14:03:00Z","schema_version":1,"stream_id":"model:0f","stream_position":3}'
    )


def test_times_are_normalised_to_utc_and_naive_ones_refused() -> None:
    local = datetime(2026, 3, 3, 16, 3, tzinfo=timezone(timedelta(hours=2)))
    assert utc(local) == datetime(2026, 3, 3, 14, 3, tzinfo=UTC)
    assert utc(local).tzinfo is UTC
    with pytest.raises(ValueError, match="naive"):
        utc(datetime(2026, 3, 3))  # noqa: DTZ001 - the point of the test


def test_the_chain_links_are_domain_separated_sha256() -> None:
    raw = b"{}"
    assert leaf_hash(raw) == hashlib.sha256(b"\x00" + raw).digest()
    assert (
        stream_link(ZERO_HASH, raw) == hashlib.sha256(b"\x01" + ZERO_HASH + leaf_hash(raw)).digest()
    )
    assert (
        log_link(ZERO_HASH, 1, ZERO_HASH)
        == hashlib.sha256(b"\x02" + ZERO_HASH + (1).to_bytes(8, "big") + ZERO_HASH).digest()
    )
    assert stream_link(ZERO_HASH, raw) != log_link(ZERO_HASH, 0, leaf_hash(raw))
