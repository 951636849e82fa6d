"""Garbage collection of the blob store: orphans older than a grace period are deleted,
never a blob a version names. I/O: Postgres, the blob store.

Race-safety. Each deletion is one transaction: append ``artifact.blob_deleted`` to the
``blobstore:collections`` stream (which takes that stream's exclusive lock until commit),
then, under the lock, look again (a fresh read of every model that recorded storing the
blob: a version naming it, or an upload of it inside the grace period, keeps it), then
delete the bytes, then commit. An upload's record and a version registration that rely on
a blob are guarded by that stream's version (``service.artifacts.service``): one that
committed before the lock was taken is seen by the second look; one that comes after
finds the stream moved and looks for the bytes again (a registration is then refused
422 ``blob_not_stored``; an upload answers 503 and is retried). If anything fails before
the commit the deletion is not recorded; a deletion of bytes whose record then failed to
commit leaves a blob no version names missing, which is what was intended anyway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import cast

import asyncpg

from eventlog.store import EventStore, Metadata
from events.artifacts import BlobStored
from events.blob_collection import BLOB_COLLECTION, DeleteBlob
from events.errors import ConcurrencyError
from events.model.decider import MODEL
from events.streams import BLOB_COLLECTIONS_STREAM, artifacts_stream, model_stream
from service.artifacts.audit import ORPHAN, AuditReport
from service.artifacts.blobstore import blob_key
from service.artifacts.inventory import Held, Inventory
from service.commands.executor import CommandExecutor

_HOLDERS = (
    "SELECT DISTINCT stream_id FROM events WHERE event_type = 'artifact.blob_stored'"
    " AND convert_from(envelope, 'UTF8')::jsonb -> 'data' ->> 'sha256' = $1"
)


class KeptError(Exception):
    """The second look, under the lock, found a reason to keep the blob."""


async def collect(
    report: AuditReport,
    store: EventStore,
    executor: CommandExecutor,
    inventory: Inventory,
    *,
    grace: timedelta,
    now: datetime,
    actor: str,
) -> None:
    """Delete the report's orphans and ``blobs/incoming/`` leftovers older than ``grace``;
    record what was deleted, and what was kept on a second look, in the report."""
    for finding in report.findings:
        if finding.status != ORPHAN or finding.age_seconds is None:
            continue
        if finding.age_seconds < grace.total_seconds() or finding.size is None:
            continue
        sha256 = finding.digest.removeprefix("sha256:")
        try:
            await collect_blob(
                store,
                executor,
                inventory,
                sha256=sha256,
                size=finding.size,
                age_seconds=finding.age_seconds,
                grace=grace,
                now=now,
                actor=actor,
            )
        except KeptError as exc:
            report.kept.append(f"{finding.digest}: {exc}")
        except ConcurrencyError:
            report.kept.append(f"{finding.digest}: another collector ran at the same time")
        else:
            report.collected.append(finding.digest)
    for leftover in report.incoming:
        if leftover.age_seconds >= grace.total_seconds():
            swept = Held(leftover.key, None, leftover.size, now)
            if await inventory.delete(swept):
                report.swept.append(leftover.key)


async def collect_blob(
    store: EventStore,
    executor: CommandExecutor,
    inventory: Inventory,
    *,
    sha256: str,
    size: int,
    age_seconds: int,
    grace: timedelta,
    now: datetime,
    actor: str,
    under_lock: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Record the deletion, look again under the lock (KeptError: nothing recorded, nothing
    deleted), delete the bytes, commit. ``under_lock`` runs last before the commit (tests
    use it to send a registration at that moment)."""
    holders = await _holders(store, sha256)
    version = await store.stream_version(BLOB_COLLECTIONS_STREAM)
    command = DeleteBlob(
        actor=actor,
        now=now,
        sha256=sha256,
        size=size,
        age_seconds=age_seconds,
        grace_seconds=int(grace.total_seconds()),
        stored_for=tuple(holders),
    )
    events = BLOB_COLLECTION.decide(command, BLOB_COLLECTION.initial_state())
    async with store.pool.acquire() as pooled, pooled.transaction():
        result = await store.append(
            BLOB_COLLECTIONS_STREAM,
            version,
            events,
            Metadata(actor=actor, occurred_at=now),
            conn=cast(asyncpg.Connection, pooled),
        )
        # The lock is held from here to the commit: see the module docstring.
        await _second_look(store, executor, sha256, now=now, grace=grace)
        await inventory.delete(Held(blob_key(sha256), sha256, size, now))
        if under_lock is not None:
            await under_lock()
    store.committed(result)
    executor.forget(BLOB_COLLECTIONS_STREAM)


async def _holders(store: EventStore, sha256: str) -> list[str]:
    """The models that recorded storing the blob, from the log as committed now."""
    rows = await store.pool.fetch(_HOLDERS, sha256)
    return sorted(r["stream_id"].split(":", 1)[1] for r in rows)


async def _second_look(
    store: EventStore, executor: CommandExecutor, sha256: str, *, now: datetime, grace: timedelta
) -> None:
    for model_id in await _holders(store, sha256):
        for stored in await store.read_stream(artifacts_stream(model_id)):
            event = store.codec.decode(stored.envelope)
            fresh = now - stored.envelope.occurred_at < grace
            if isinstance(event, BlobStored) and event.sha256 == sha256 and fresh:
                raise KeptError(f"model {model_id} stored it inside the grace period")
        _, state = await executor.state_of(model_stream(model_id), MODEL)
        for version in state.versions.values():
            if any(entry.sha256 == sha256 for entry in version.content.artifacts):
                raise KeptError(f"version {version.number} of {state.name} names it")
