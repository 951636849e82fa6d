"""The codec: typed decoding, and upcasting of stored events written by older code.

The golden files are data exactly as an older version of the code stored it; they never
change. If a refactor stops them decoding, stored history would stop decoding too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest

from events.base import Event
from events.codec import EventCodec
from events.errors import UnknownEventTypeError

GOLDEN = Path(__file__).parent / "golden_codec"


class Labelled(Event, frozen=True):
    """v1 was ``{"name"}``; v2 renamed it to ``label``; v3 added ``source``."""

    event_type: ClassVar[str] = "sample.labelled"
    schema_version: ClassVar[int] = 3
    label: str
    source: str


def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"label": data["name"], "source": "unknown"}


def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return data  # v3 only documented that source is required; the shape is unchanged


CODEC = EventCodec([Labelled], {("sample.labelled", 1): v1_to_v2, ("sample.labelled", 2): v2_to_v3})


@pytest.mark.parametrize("version", [1, 2])
def test_golden_data_of_every_old_version_decodes_to_the_current_type(version: int) -> None:
    raw = (GOLDEN / f"sample.labelled.v{version}.json").read_bytes()
    assert CODEC.decode_data("sample.labelled", version, raw) == Labelled(
        label="churn", source="unknown"
    )


def test_current_data_decodes_without_upcasting() -> None:
    raw = CODEC.encode(Labelled(label="a", source="b"))
    assert raw == b'{"label":"a","source":"b"}'
    assert CODEC.decode_data("sample.labelled", 3, raw) == Labelled(label="a", source="b")


def test_unknown_types_and_future_versions_are_refused_by_name() -> None:
    with pytest.raises(UnknownEventTypeError, match="nope"):
        CODEC.decode_data("nope", 1, b"{}")
    with pytest.raises(UnknownEventTypeError, match="v4"):
        CODEC.decode_data("sample.labelled", 4, b"{}")


def test_a_missing_link_in_the_upcaster_chain_is_an_error() -> None:
    partial = EventCodec([Labelled], {("sample.labelled", 2): v2_to_v3})
    with pytest.raises(UnknownEventTypeError, match="no upcaster"):
        partial.decode_data("sample.labelled", 1, b'{"name":"x"}')


def test_a_codec_refuses_duplicate_names_and_pointless_upcasters() -> None:
    class Again(Event, frozen=True):
        event_type: ClassVar[str] = "sample.labelled"

    with pytest.raises(ValueError, match="twice"):
        EventCodec([Labelled, Again])
    with pytest.raises(ValueError, match="upgrades nothing"):
        EventCodec([Labelled], {("sample.labelled", 3): v2_to_v3})


def test_encoding_an_event_of_an_unregistered_class_is_refused() -> None:
    class Stranger(Event, frozen=True):
        event_type: ClassVar[str] = "sample.stranger"

    with pytest.raises(UnknownEventTypeError):
        CODEC.encode(Stranger())
    assert msgspec.json.encode(Stranger()) == b"{}"
