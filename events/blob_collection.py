"""The ``blobstore:collections`` stream: blobs of the shared store deleted by garbage
collection. Pure.

A blob that no version refers to (a failed or abandoned upload) may be deleted once it is
older than a grace period (``modelreg audit artifacts --gc``). Each deletion is recorded
here first, in the transaction that holds this stream's lock while the bytes are deleted:
an upload or a version registration that relies on a blob's bytes is guarded by this
stream's version (``EventStore.append(guards=...)``), so it either commits before the
collector looks (and the collector then sees the reference and keeps the blob) or finds
the stream moved and checks the bytes again. The state is the set of digests ever
deleted: only for those can "recorded as stored" and "present in the store" disagree.
"""

from __future__ import annotations

from typing import ClassVar, assert_never

import msgspec
from msgspec.structs import replace

from events.artifacts import DIGEST_PREFIX, parse_digest
from events.base import Command, Decider, Event
from events.errors import ValidationError
from events.names import validate_actor, validate_id
from events.streams import BLOBSTORE_TYPE

STREAM_TYPE = BLOBSTORE_TYPE


class BlobDeleted(Event, frozen=True, kw_only=True):
    """The bytes of ``sha256`` were deleted from the store: no version referred to them
    and they were stored last ``age_seconds`` ago (more than the grace period)."""

    event_type: ClassVar[str] = "artifact.blob_deleted"
    sha256: str
    size: int
    age_seconds: int
    stored_for: tuple[str, ...] = ()  # the models that had recorded storing it


class DeleteBlob(Command, frozen=True, kw_only=True):
    sha256: str
    size: int
    age_seconds: int
    grace_seconds: int
    stored_for: tuple[str, ...] = ()


class CollectionState(msgspec.Struct, frozen=True, kw_only=True):
    deleted: frozenset[str] = frozenset()  # sha256 hex of every blob ever deleted


BlobCollectionEvent = BlobDeleted
BLOB_COLLECTION_EVENT_TYPES: tuple[type[Event], ...] = (BlobDeleted,)


def initial_state() -> CollectionState:
    return CollectionState()


def evolve(state: CollectionState, event: BlobCollectionEvent) -> CollectionState:
    match event:
        case BlobDeleted():
            return replace(state, deleted=state.deleted | {event.sha256})
        case _:
            assert_never(event)


def decide(command: DeleteBlob, _state: CollectionState) -> list[BlobCollectionEvent]:
    """Record a deletion; refuse one inside the grace period (the shell checked references)."""
    validate_actor(command.actor)
    parse_digest(DIGEST_PREFIX + command.sha256, "sha256")
    for model_id in command.stored_for:
        validate_id(model_id, "stored_for")
    if command.size < 0:
        raise ValidationError("size", "range", "a blob's size is a byte count >= 0")
    if command.grace_seconds < 0:
        raise ValidationError("grace", "range", "the grace period is >= 0 seconds")
    if command.age_seconds < command.grace_seconds:
        raise ValidationError(
            "grace",
            "grace_period",
            f"blob sha256:{command.sha256} is {command.age_seconds}s old, inside the"
            f" {command.grace_seconds}s grace period",
        )
    return [
        BlobDeleted(
            sha256=command.sha256,
            size=command.size,
            age_seconds=command.age_seconds,
            stored_for=tuple(sorted(set(command.stored_for))),
        )
    ]


BLOB_COLLECTION: Decider[CollectionState, DeleteBlob, BlobCollectionEvent] = Decider(
    stream_type=STREAM_TYPE,
    initial_state=initial_state,
    evolve=evolve,
    decide=decide,
    state_type=CollectionState,
)
