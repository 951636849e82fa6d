"""Every event type, the codec that reads and writes them, and the stream id scheme. Pure.

    model:{model_id}               a registered model (events.model.decider)
    metrics:{model_id}:{version}   metric batches of one version (events.metrics)
    policy:registry                the registry-wide default policy (events.registry_policy)
    token:{token_id}               an access token (events.access)

Model ids are opaque ids chosen by the shell (``A-Z a-z 0-9 _ -``, at most 64), never
names, so a rename moves no history and a stream id never contains a user's ``:``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from events.access import TOKEN_EVENT_TYPES, TOKENS
from events.base import Decider, Event
from events.codec import EventCodec, Upcaster
from events.metrics import METRICS, METRICS_EVENT_TYPES
from events.model.decider import MODEL
from events.model.events import MODEL_EVENT_TYPES
from events.names import validate_id
from events.registry_policy import (
    REGISTRY_POLICY,
    REGISTRY_POLICY_EVENT_TYPES,
    REGISTRY_POLICY_STREAM,
)

ALL_EVENT_TYPES: tuple[type[Event], ...] = (
    *MODEL_EVENT_TYPES,
    *METRICS_EVENT_TYPES,
    *REGISTRY_POLICY_EVENT_TYPES,
    *TOKEN_EVENT_TYPES,
)

# (event_type, from_schema_version) -> pure upgrade of the decoded JSON object. None yet.
UPCASTERS: Mapping[tuple[str, int], Upcaster] = {}

CODEC = EventCodec(ALL_EVENT_TYPES, UPCASTERS)

# stream type (the part of a stream id before the first ':') -> its decider
DECIDERS: Mapping[str, Decider[Any, Any, Any]] = {
    d.stream_type: d for d in (MODEL, METRICS, REGISTRY_POLICY, TOKENS)
}

__all__ = [
    "ALL_EVENT_TYPES",
    "CODEC",
    "DECIDERS",
    "REGISTRY_POLICY_STREAM",
    "UPCASTERS",
    "decider_for",
    "metrics_stream",
    "model_stream",
]


def model_stream(model_id: str) -> str:
    return f"model:{validate_id(model_id, 'model_id')}"


def metrics_stream(model_id: str, version: int) -> str:
    if version < 1:
        raise ValueError("versions are numbered from 1")
    return f"metrics:{validate_id(model_id, 'model_id')}:{version}"


def decider_for(stream_id: str) -> Decider[Any, Any, Any]:
    """The decider that folds ``stream_id`` (e.g. for time travel over any stream)."""
    decider = DECIDERS.get(stream_id.split(":", 1)[0])
    if decider is None:
        raise ValueError(f"no stream type owns {stream_id!r}")
    return decider
