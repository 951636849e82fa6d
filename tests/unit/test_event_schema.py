"""The JSON Schema of published payloads is generated from the codec's own types."""

from __future__ import annotations

import json
from typing import Any

import pytest

from events.catalogue import CODEC
from service.publication.event_schema import catalogue_schema, payload_schema
from tests.support.sample_events import CODEC as SAMPLE_CODEC


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_every_registry_event_type_has_a_message_schema_whose_references_resolve() -> None:
    schema = catalogue_schema(CODEC)
    json.dumps(schema)  # plain JSON
    assert set(schema["x-modelreg-events"]) == set(CODEC.event_types)
    assert len(schema["oneOf"]) == len(CODEC.event_types)
    for ref in _refs(schema):
        assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in schema["$defs"], ref
    for event_type, entry in schema["x-modelreg-events"].items():
        message = schema["$defs"][entry["message"]]
        assert message["properties"]["event_type"] == {"const": event_type}
        assert message["properties"]["schema_version"] == {
            "const": CODEC.event_types[event_type].schema_version
        }
        assert message["properties"]["data"] == {"$ref": f"#/$defs/{entry['data']}"}
        assert {"event_id", "stream_id", "stream_position", "occurred_at", "actor", "data"} <= set(
            message["required"]
        )


def test_the_data_schema_is_the_msgspec_schema_of_the_event_class() -> None:
    schema = catalogue_schema(SAMPLE_CODEC)
    noted = schema["$defs"]["Noted"]
    assert noted["properties"] == {"text": {"type": "string"}} and noted["required"] == ["text"]
    assert schema["$defs"]["Counted"]["properties"] == {"n": {"type": "integer"}}


def test_one_payload_schema_stands_alone() -> None:
    schema = payload_schema(SAMPLE_CODEC, "test.noted")
    assert schema["$ref"] == "#/$defs/NotedMessage" and "NotedMessage" in schema["$defs"]
    with pytest.raises(KeyError):
        payload_schema(SAMPLE_CODEC, "test.unknown")
