"""The event catalogue: unique permanent names, codec round trips, golden encoded forms.

Golden files pin the canonical bytes of every event type, so a change that would make
stored events unreadable or re-encode differently fails here. To add the file of a NEW
event type run ``MODELREG_WRITE_GOLDEN=1 pytest tests/unit/test_catalogue.py``: it writes
missing files only and never overwrites one.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import msgspec
import pytest

from events.catalogue import ALL_EVENT_TYPES, CODEC, DECIDERS, decider_for
from events.envelope import Envelope, decode_envelope, encode_envelope
from events.errors import ValidationError
from events.streams import REGISTRY_POLICY_STREAM, metrics_stream, model_stream
from tests.unit.domain_helpers import NOW
from tests.unit.golden_samples import samples

GOLDEN = Path(__file__).parent / "golden"
NAME = re.compile(r"[a-z]+(\.[a-z][a-z_]*)+")
SAMPLES = samples()
TYPE_NAMES = sorted(cls.event_type for cls in ALL_EVENT_TYPES)


def _golden_path(event_type: str, version: int) -> Path:
    return GOLDEN / f"{event_type}.v{version}.json"


# Event types whose shape changed, at their current schema version (each has upcasters).
NEWER = {"token.issued": 2}


def test_event_type_names_are_unique_dotted_lower_case_and_at_their_schema_version() -> None:
    names = [cls.event_type for cls in ALL_EVENT_TYPES]
    assert len(names) == len(set(names))
    assert [n for n in names if not NAME.fullmatch(n)] == []
    assert {cls.event_type: cls.schema_version for cls in ALL_EVENT_TYPES} == {
        n: NEWER.get(n, 1) for n in names
    }


def test_every_event_type_is_a_frozen_struct() -> None:
    assert all(cls.__struct_config__.frozen for cls in ALL_EVENT_TYPES)


def test_every_event_type_has_a_representative_sample() -> None:
    assert sorted(SAMPLES) == TYPE_NAMES
    assert all(type(SAMPLES[name]).event_type == name for name in SAMPLES)


@pytest.mark.parametrize("event_type", TYPE_NAMES)
def test_the_codec_round_trips_every_event_type(event_type: str) -> None:
    event = SAMPLES[event_type]
    data = CODEC.encode(event)
    assert CODEC.decode_data(event_type, type(event).schema_version, data) == event
    envelope = Envelope(
        event_id=uuid.UUID(int=1),
        stream_id="model:x",
        stream_position=1,
        event_type=event_type,
        schema_version=type(event).schema_version,
        occurred_at=NOW,
        actor="alice",
        data=msgspec.Raw(data),
    )
    assert CODEC.decode(decode_envelope(encode_envelope(envelope))) == event


@pytest.mark.parametrize("event_type", TYPE_NAMES)
def test_the_encoded_form_of_every_event_type_matches_its_golden_file(event_type: str) -> None:
    event = SAMPLES[event_type]
    path = _golden_path(event_type, type(event).schema_version)
    encoded = CODEC.encode(event)
    if not path.exists() and os.environ.get("MODELREG_WRITE_GOLDEN") == "1":
        path.write_bytes(encoded + b"\n")
    assert path.exists(), f"{path.name} is missing: run with MODELREG_WRITE_GOLDEN=1 to write it"
    stored = path.read_bytes().rstrip(b"\n")
    assert encoded == stored
    assert CODEC.encode(CODEC.decode_data(event_type, type(event).schema_version, stored)) == stored


def test_every_golden_file_still_decodes_including_older_schema_versions() -> None:
    files = sorted(GOLDEN.glob("*.json"))
    assert files
    for path in files:
        event_type, version = re.fullmatch(r"(.+)\.v(\d+)\.json", path.name).groups()  # type: ignore[union-attr]
        assert event_type in CODEC.event_types, f"{path.name} names an unknown event type"
        CODEC.decode_data(event_type, int(version), path.read_bytes().rstrip(b"\n"))


def test_stream_ids_follow_the_documented_scheme() -> None:
    assert model_stream("0b5e6c1f") == "model:0b5e6c1f"
    assert metrics_stream("0b5e6c1f", 3) == "metrics:0b5e6c1f:3"
    assert REGISTRY_POLICY_STREAM == "policy:registry"
    with pytest.raises(ValidationError):
        model_stream("a:b")
    with pytest.raises(ValueError, match="numbered"):
        metrics_stream("m", 0)


def test_every_stream_type_has_a_decider_found_from_its_stream_id() -> None:
    assert set(DECIDERS) == {
        "model",
        "metrics",
        "policy",
        "token",
        "access",
        "artifacts",
        "blobstore",
        "webhook",
        "subject",
    }
    assert decider_for(model_stream("m1")).stream_type == "model"
    assert decider_for(metrics_stream("m1", 2)).stream_type == "metrics"
    assert decider_for(REGISTRY_POLICY_STREAM).stream_type == "policy"
    assert decider_for("access:registry").stream_type == "access"
    with pytest.raises(ValueError, match="no stream type"):
        decider_for("nope:1")
