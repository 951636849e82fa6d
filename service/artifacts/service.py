"""Storing and finding a model's files: uploads recorded as events, the manifest rule
checked against them, a version's file located by number, alias or stage. I/O.

An upload is streamed into the blob store (verified there) and only then recorded on the
model's ``artifacts:`` stream, so an event never names bytes the store does not hold. The
stream, not a view, answers "has this model stored that blob?": it is read through the
executor's cache, so a version registered right after its uploads always sees them.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass

from events.artifacts import ARTIFACTS, StoreBlob, check_manifest
from events.errors import ConflictError, NotFoundError, ValidationError
from events.model.decider import MODEL
from events.model.state import ModelState, VersionState
from events.stages import Stage
from events.streams import artifacts_stream, model_stream
from events.version_content import ArtifactEntry
from service.artifacts.blobstore import BlobStore, Put
from service.commands.executor import CommandExecutor
from service.commands.registry import Registry, Written

STAGE_PREFIX = "stage:"
ALIAS_PREFIX = "@"


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
    kept), then record it for the model unless it already was."""
    put = await blobs.put(sha256, body, max_bytes=max_bytes)
    return await record_stored(
        registry, put, model_id=model_id, actor=actor, sha256=sha256, id_seed=id_seed
    )


async def record_stored(
    registry: Registry,
    put: Put,
    *,
    model_id: str,
    actor: str,
    sha256: str,
    id_seed: str | None = None,
) -> Stored:
    """Record a blob the store verified and holds for the model, unless it already was."""
    command = StoreBlob(
        actor=actor, now=registry.now(), model_id=model_id, sha256=sha256, size=put.size
    )
    outcome = await registry.executor.execute(
        artifacts_stream(model_id), ARTIFACTS, command, id_seed=id_seed
    )
    return Stored(put=put, written=await registry.written_from(model_id, outcome))


async def model_state(registry: Registry, name: str) -> tuple[str, ModelState]:
    model_id = await registry.model_id(name)
    _, state = await registry.executor.state_of(model_stream(model_id), MODEL)
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
    try:
        stage = Stage(text)
    except ValueError:
        raise ValidationError(
            "version",
            "enum",
            f"stage is one of {', '.join(s.value for s in Stage)}, not {text!r}",
        ) from None
    numbers = [n for n, v in state.versions.items() if v.stage is stage]
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
