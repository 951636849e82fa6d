"""Storing and finding a model's files: uploads recorded as events, the manifest rule
checked against them, a version's file located by number, alias or stage. I/O.

An upload is streamed into the blob store (verified there) and only then recorded on the
model's ``artifacts:`` stream, so an event never names bytes the store does not hold. The
stream, not a view, answers "has this model stored that blob?": it is read through the
executor's cache, so a version registered right after its uploads always sees them.

Garbage collection may delete a blob no version refers to (``service.artifacts.collect``).
Whatever relies on a blob's bytes (recording an upload, registering a version naming
stored blobs) is therefore guarded by the version of the ``blobstore:collections`` stream
read before it looked at the bytes: if a deletion was recorded meanwhile, it looks again.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from eventlog.store import StaleGuardError
from events.artifacts import ARTIFACTS, StoreBlob, check_manifest
from events.blob_collection import BLOB_COLLECTION
from events.errors import ConflictError, NotFoundError, ValidationError
from events.model.state import ModelState, VersionState
from events.names import validate_stage_name
from events.streams import BLOB_COLLECTIONS_STREAM, artifacts_stream
from events.version_content import ArtifactEntry
from service.artifacts.blobstore import BlobStore, BlobStoreUnavailableError, Put
from service.commands.executor import CommandExecutor
from service.commands.registry import Registry, Written

STAGE_PREFIX = "stage:"
ALIAS_PREFIX = "@"
# How often a write is tried again because a blob deletion was recorded while it looked.
GUARD_ATTEMPTS = 5

T = TypeVar("T")
Guards = Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Stored:
    """An upload's outcome: the store's answer and the event (if any) that recorded it."""

    put: Put
    written: Written

    @property
    def new_for_model(self) -> bool:
        return bool(self.written.events)


async def stored_blobs(executor: CommandExecutor, model_id: str) -> dict[str, int]:
    """sha256 -> size of every blob the model has stored."""
    _, state = await executor.state_of(artifacts_stream(model_id), ARTIFACTS)
    return state.blobs


async def require_stored(
    executor: CommandExecutor, model_id: str, artifacts: Sequence[ArtifactEntry]
) -> None:
    """Refuse (422) a manifest naming a blob the model has not stored (unless external)."""
    if all(entry.external for entry in artifacts):
        return
    check_manifest(artifacts, await stored_blobs(executor, model_id))


async def store_blob(
    registry: Registry,
    blobs: BlobStore,
    *,
    model_id: str,
    actor: str,
    sha256: str,
    body: AsyncIterable[bytes],
    max_bytes: int,
    id_seed: str | None = None,
) -> Stored:
    """Stream ``body`` into the store as blob ``sha256`` (DigestMismatchError: nothing
    kept), then record it for the model unless it already was.

    The store may have held the bytes already (the upload then wrote nothing), and the
    collector may have deleted them since: the record is guarded by the deletions as they
    stood before the upload, and when one was recorded meanwhile the bytes are looked for
    again; gone, the upload answers 503 (retry: it then stores them anew)."""
    guards = await collection_guards(registry)
    put = await blobs.put(sha256, body, max_bytes=max_bytes)
    return await record_stored(
        registry,
        blobs,
        put,
        guards=guards,
        model_id=model_id,
        actor=actor,
        sha256=sha256,
        id_seed=id_seed,
    )


async def record_stored(
    registry: Registry,
    blobs: BlobStore,
    put: Put,
    *,
    guards: Guards,
    model_id: str,
    actor: str,
    sha256: str,
    id_seed: str | None = None,
) -> Stored:
    """Record a blob the store verified and holds for the model, unless it already was.

    ``guards``: ``collection_guards`` taken before the bytes were put, so a deletion by the
    collector since then is noticed (see ``store_blob``)."""
    command = StoreBlob(
        actor=actor, now=registry.now(), model_id=model_id, sha256=sha256, size=put.size
    )
    for _ in range(GUARD_ATTEMPTS):
        try:
            outcome = await registry.executor.execute(
                artifacts_stream(model_id), ARTIFACTS, command, id_seed=id_seed, guards=guards
            )
        except StaleGuardError:
            pass
        else:
            # Recorded under the guard, or nothing to record and still nothing deleted.
            if outcome.events or await registry.store.guards_hold(guards):
                return Stored(put=put, written=await registry.written_from(model_id, outcome))
        guards = await collection_guards(registry)
        if await blobs.size_of(sha256) is None:
            break
    raise BlobStoreUnavailableError(
        f"blob sha256:{sha256} was garbage-collected while it was uploaded; upload it again"
    )


async def collection_guards(registry: Registry) -> Guards:
    """The guard on blob deletions: the collection stream's version now."""
    return {BLOB_COLLECTIONS_STREAM: await registry.store.stream_version(BLOB_COLLECTIONS_STREAM)}


async def with_stored_blobs(
    registry: Registry,
    blobs: BlobStore,
    model_id: str,
    artifacts: Sequence[ArtifactEntry],
    write: Callable[[Guards | None], Awaitable[T]],
) -> T:
    """``write(guards)`` once the manifest rule holds: every stored entry's blob recorded
    for the model and, if it was ever garbage-collected, present again. ``write`` must
    pass ``guards`` to its append, so it cannot land after a deletion it did not see."""
    for attempt in range(1, GUARD_ATTEMPTS + 1):
        guards = await stored_blobs_guard(registry, blobs, model_id, artifacts)
        try:
            return await write(guards)
        except StaleGuardError:
            if attempt == GUARD_ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def stored_blobs_guard(
    registry: Registry, blobs: BlobStore, model_id: str, artifacts: Sequence[ArtifactEntry]
) -> Guards | None:
    """Check the manifest rule (422) and return the guard the registering append must
    carry; None when every entry is external (no bytes here to rely on)."""
    if all(entry.external for entry in artifacts):
        return None
    version, collected = await registry.executor.state_of(BLOB_COLLECTIONS_STREAM, BLOB_COLLECTION)
    check_manifest(artifacts, await stored_blobs(registry.executor, model_id))
    for index, entry in enumerate(artifacts):
        if entry.external or entry.sha256 not in collected.deleted:
            continue
        if await blobs.size_of(entry.sha256) is None:
            raise ValidationError(
                f"artifacts[{index}].sha256",
                "blob_not_stored",
                f"artifact {entry.path!r} names blob sha256:{entry.sha256}, which was"
                " garbage-collected (no version referred to it): upload it again",
                path=entry.path,
            )
    return {BLOB_COLLECTIONS_STREAM: version}


async def model_state(registry: Registry, name: str) -> tuple[str, ModelState]:
    """The model's id and current state: one query when this process's cached state is
    at the stream's version (a file read or upload right after another one)."""
    model_id, _, state = await registry.model(name)
    return model_id, state


def resolve_version(state: ModelState, ref: str) -> VersionState:
    """``7`` (a number), ``@champion`` (an alias) or ``stage:production`` (the highest
    version now in that stage); NotFoundError when it names nothing."""
    if ref.startswith(ALIAS_PREFIX):
        alias = ref[len(ALIAS_PREFIX) :]
        number = state.aliases.get(alias)
        if number is None:
            raise NotFoundError(f"model {state.name!r} has no alias {alias!r}", alias=alias)
        return state.version(number)
    if ref.startswith(STAGE_PREFIX):
        return _in_stage(state, ref[len(STAGE_PREFIX) :])
    if ref.isascii() and ref.isdigit() and len(ref) <= 10:
        return state.version(int(ref))
    raise ValidationError(
        "version",
        "pattern",
        "version is a number (7), an alias (@champion) or a stage (stage:production)",
    )


def _in_stage(state: ModelState, text: str) -> VersionState:
    stage = validate_stage_name(text, "version")
    numbers = [n for n, v in state.versions.items() if v.stage == stage]
    if not numbers:
        raise NotFoundError(f"model {state.name!r} has no version in {stage}", stage=stage)
    return state.versions[max(numbers)]


def find_file(version: VersionState, path: str) -> ArtifactEntry:
    """The manifest entry at ``path``; an external one has no bytes here (409)."""
    entry = next((e for e in version.content.artifacts if e.path == path), None)
    if entry is None:
        raise NotFoundError(f"version {version.number} has no file {path!r}", path=path)
    if entry.external:
        raise ConflictError(
            f"file {path!r} is external: the registry holds no copy; its bytes are at its uri",
            path=path,
            uri=entry.uri,
        )
    return entry
