"""Turn events into envelope data and back, upcasting old schema versions on read. Pure.

Stored events are never rewritten. When an event type's shape changes, its class bumps
``schema_version`` and registers an upcaster from the previous version: a pure function
over the decoded JSON object. Reading an old event runs the chain v1 -> v2 -> ... -> current
before the typed conversion, so folds only ever see the current shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from events.base import Event
from events.envelope import Envelope, encode_canonical
from events.errors import UnknownEventTypeError

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class EventCodec:
    """Encodes events to canonical data bytes and decodes envelopes to typed events."""

    def __init__(
        self,
        event_types: Iterable[type[Event]],
        upcasters: Mapping[tuple[str, int], Upcaster] | None = None,
    ) -> None:
        self._types: dict[str, type[Event]] = {}
        for cls in event_types:
            if cls.event_type in self._types:
                raise ValueError(f"event type {cls.event_type!r} is declared twice")
            self._types[cls.event_type] = cls
        self._decoders = {name: msgspec.json.Decoder(cls) for name, cls in self._types.items()}
        self._upcasters = dict(upcasters or {})
        for event_type, version in self._upcasters:
            target = self._types.get(event_type)
            if target is None or version >= target.schema_version:
                raise ValueError(f"upcaster ({event_type!r}, v{version}) upgrades nothing")

    @property
    def event_types(self) -> Mapping[str, type[Event]]:
        return self._types

    def encode(self, event: Event) -> bytes:
        if self._types.get(event.event_type) is not type(event):
            raise UnknownEventTypeError(event.event_type)
        return encode_canonical(event)

    def decode(self, envelope: Envelope) -> Event:
        return self.decode_data(envelope.event_type, envelope.schema_version, envelope.data)

    def decode_data(self, event_type: str, schema_version: int, data: bytes | msgspec.Raw) -> Event:
        cls = self._types.get(event_type)
        if cls is None:
            raise UnknownEventTypeError(event_type)
        if schema_version == cls.schema_version:
            return self._decoders[event_type].decode(data)
        if schema_version > cls.schema_version:
            raise UnknownEventTypeError(f"{event_type} v{schema_version} (newer than this code)")
        fields: dict[str, Any] = msgspec.json.decode(data)
        for version in range(schema_version, cls.schema_version):
            upcast = self._upcasters.get((event_type, version))
            if upcast is None:
                raise UnknownEventTypeError(
                    f"{event_type} v{version} (no upcaster to v{version + 1})"
                )
            fields = upcast(fields)
        return msgspec.convert(fields, cls)
