"""The ``artifacts:{model_id}`` stream: the blobs stored for one model, and the manifest
rule that versions may only name those. Pure.

A blob is a file's bytes named by their sha256. The shell streams an upload into the
blob store, verifies its digest, and only then records ``artifact.blob_stored`` here (who
and when are the envelope's actor and time). The store itself is shared by every model
and keeps each digest's bytes once; this stream says which digests a model has proved it
holds, so nobody can name another model's blob by its digest alone.

Kept apart from the model stream so uploads never contend with governance decisions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import ClassVar, assert_never

import msgspec
from msgspec.structs import replace

from events.base import Command, Decider, Event
from events.errors import ConflictError, ValidationError
from events.names import validate_actor, validate_id
from events.streams import ARTIFACTS_TYPE
from events.version_content import ArtifactEntry

STREAM_TYPE = ARTIFACTS_TYPE
DIGEST_PREFIX = "sha256:"
_HEX = re.compile(r"[0-9a-f]{64}")


class BlobStored(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "artifact.blob_stored"
    model_id: str
    sha256: str
    size: int


class StoreBlob(Command, frozen=True, kw_only=True):
    model_id: str
    sha256: str
    size: int


class ArtifactsState(msgspec.Struct, frozen=True, kw_only=True):
    model_id: str = ""
    blobs: dict[str, int] = msgspec.field(default_factory=dict)  # sha256 hex -> size


ArtifactsEvent = BlobStored
ARTIFACT_EVENT_TYPES: tuple[type[Event], ...] = (BlobStored,)


def initial_state() -> ArtifactsState:
    return ArtifactsState()


def evolve(state: ArtifactsState, event: ArtifactsEvent) -> ArtifactsState:
    match event:
        case BlobStored():
            return replace(
                state, model_id=event.model_id, blobs={**state.blobs, event.sha256: event.size}
            )
        case _:
            assert_never(event)


def parse_digest(text: str, field: str = "digest") -> str:
    """The hex of a ``sha256:<64 lower-case hex>`` digest; ValidationError otherwise."""
    hex_part = text.removeprefix(DIGEST_PREFIX)
    if not text.startswith(DIGEST_PREFIX) or _HEX.fullmatch(hex_part) is None:
        raise ValidationError(
            field, "pattern", f"{field} is 'sha256:' followed by 64 lower-case hex digits"
        )
    return hex_part


def decide(command: StoreBlob, state: ArtifactsState) -> list[ArtifactsEvent]:
    """Record a verified blob once: storing the same bytes again records nothing."""
    validate_actor(command.actor)
    validate_id(command.model_id, "model_id")
    parse_digest(DIGEST_PREFIX + command.sha256)
    if command.size < 0:
        raise ValidationError("size", "range", "a blob's size is a byte count >= 0")
    if state.model_id and state.model_id != command.model_id:
        raise ConflictError(f"this stream holds the blobs of {state.model_id}")
    known = state.blobs.get(command.sha256)
    if known is None:
        return [BlobStored(model_id=command.model_id, sha256=command.sha256, size=command.size)]
    if known != command.size:  # the same sha256 over different lengths: a broken store
        raise ConflictError(
            f"blob sha256:{command.sha256} is recorded with {known} bytes, not {command.size}",
            sha256=command.sha256,
        )
    return []


def check_manifest(
    artifacts: Sequence[ArtifactEntry], stored: Mapping[str, int], field: str = "artifacts"
) -> None:
    """Refuse (rule ``blob_not_stored`` or ``blob_size``) a manifest entry that is not
    external and names a blob the model has not stored, or states another size."""
    for index, entry in enumerate(artifacts):
        if entry.external:
            continue
        size = stored.get(entry.sha256)
        if size is None:
            raise ValidationError(
                f"{field}[{index}].sha256",
                "blob_not_stored",
                f"artifact {entry.path!r} names blob sha256:{entry.sha256}, which is not stored"
                " for this model: upload it first (PUT .../blobs/sha256:<hex>) or mark the"
                ' entry "external": true with its uri',
                path=entry.path,
            )
        if size != entry.size:
            raise ValidationError(
                f"{field}[{index}].size",
                "blob_size",
                f"artifact {entry.path!r} says {entry.size} bytes; its blob holds {size}",
                path=entry.path,
            )


ARTIFACTS: Decider[ArtifactsState, StoreBlob, ArtifactsEvent] = Decider(
    stream_type=STREAM_TYPE,
    initial_state=initial_state,
    evolve=evolve,
    decide=decide,
    state_type=ArtifactsState,
)
