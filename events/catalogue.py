"""Every event type, the codec that reads and writes them, and the decider of each stream
type (the stream id scheme itself is ``events.streams``). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from events.access import TOKEN_EVENT_TYPES, TOKEN_UPCASTERS, TOKENS
from events.access_grants import ACCESS, ACCESS_EVENT_TYPES
from events.artifacts import ARTIFACT_EVENT_TYPES, ARTIFACTS
from events.base import Decider, Event
from events.blob_collection import BLOB_COLLECTION, BLOB_COLLECTION_EVENT_TYPES
from events.codec import EventCodec, Upcaster
from events.metrics import METRICS, METRICS_EVENT_TYPES
from events.model.decider import MODEL
from events.model.events import MODEL_EVENT_TYPES
from events.registry_policy import REGISTRY_POLICY, REGISTRY_POLICY_EVENT_TYPES
from events.streams import stream_type
from events.subjects import SUBJECT_EVENT_TYPES, SUBJECTS
from events.webhooks import WEBHOOK_EVENT_TYPES, WEBHOOKS

ALL_EVENT_TYPES: tuple[type[Event], ...] = (
    *MODEL_EVENT_TYPES,
    *METRICS_EVENT_TYPES,
    *REGISTRY_POLICY_EVENT_TYPES,
    *TOKEN_EVENT_TYPES,
    *ACCESS_EVENT_TYPES,
    *ARTIFACT_EVENT_TYPES,
    *BLOB_COLLECTION_EVENT_TYPES,
    *WEBHOOK_EVENT_TYPES,
    *SUBJECT_EVENT_TYPES,
)

# (event_type, from_schema_version) -> pure upgrade of the decoded JSON object.
UPCASTERS: Mapping[tuple[str, int], Upcaster] = {**TOKEN_UPCASTERS}

CODEC = EventCodec(ALL_EVENT_TYPES, UPCASTERS)

# stream type (the part of a stream id before the first ':') -> its decider
DECIDERS: Mapping[str, Decider[Any, Any, Any]] = {
    d.stream_type: d
    for d in (
        MODEL,
        METRICS,
        REGISTRY_POLICY,
        TOKENS,
        ACCESS,
        ARTIFACTS,
        BLOB_COLLECTION,
        WEBHOOKS,
        SUBJECTS,
    )
}


def decider_for(stream_id: str) -> Decider[Any, Any, Any]:
    """The decider that folds ``stream_id`` (e.g. for time travel over any stream)."""
    decider = DECIDERS.get(stream_type(stream_id))
    if decider is None:
        raise ValueError(f"no stream type owns {stream_id!r}")
    return decider
