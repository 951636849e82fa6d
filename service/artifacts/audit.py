"""Auditing the blob store against the log: which blobs are missing, corrupt or orphaned.
I/O: Postgres (reads), the blob store (reads).

The log says which blobs each model stored (``artifact.blob_stored``) and which versions
name them (``model.version_registered``); the store says what it holds. Every held blob
(or a random sample) is read back and re-hashed. A blob is

- **missing** when a version names it as a stored (not external) file and the store does
  not hold it;
- **corrupt** when its bytes no longer hash to its name, or their count differs from the
  size recorded for it;
- an **orphan** when the store holds it and no version names it (an upload that was never
  registered, or whose registration failed): ``service.artifacts.collect`` deletes those
  after a grace period.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from eventlog.store import EventStore
from events.artifacts import BlobStored
from events.model.decider import MODEL
from events.streams import ARTIFACTS_TYPE, MODEL_TYPE
from service.artifacts.blobstore import BlobStore
from service.artifacts.inventory import Held, Inventory
from service.commands.executor import CommandExecutor

MISSING = "missing"
CORRUPT = "corrupt"
ORPHAN = "orphan"

# (blobs re-hashed so far, bytes re-hashed so far)
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Reference:
    """A version's manifest entry naming a blob."""

    model_id: str
    model: str
    version: int
    path: str
    external: bool
    uri: str

    @property
    def needs_bytes(self) -> bool:
        """Whether the registry must hold the bytes (entries recorded before the artifact
        store carry a ``uri`` without the external marker: their bytes were never here)."""
        return not self.external and not self.uri

    def label(self) -> str:
        return f"{self.model}@{self.version}:{self.path}"


@dataclass(frozen=True, slots=True)
class StoredBy:
    model_id: str
    at: datetime
    size: int


@dataclass(slots=True)
class Ledger:
    """What the log says about blobs: who stored each, and which versions name it."""

    stored: dict[str, list[StoredBy]] = field(default_factory=lambda: defaultdict(list))
    references: dict[str, list[Reference]] = field(default_factory=lambda: defaultdict(list))
    names: dict[str, str] = field(default_factory=dict)  # model_id -> name
    # Blobs a deleted model's versions named, and when it was deleted: their grace period
    # before collection counts from the deletion, not from the upload.
    released: dict[str, datetime] = field(default_factory=dict)

    def last_stored(self, sha256: str) -> datetime | None:
        times = [s.at for s in self.stored.get(sha256, ())]
        return max(times) if times else None

    def recorded_size(self, sha256: str) -> int | None:
        """The size the uploads recorded (the decider keeps it one per digest)."""
        sizes = {s.size for s in self.stored.get(sha256, ())}
        return sizes.pop() if len(sizes) == 1 else None


async def read_ledger(store: EventStore, executor: CommandExecutor) -> Ledger:
    """Every model's stored blobs and every version's manifest, as recorded now."""
    ledger = Ledger()
    for stream_id in await store.stream_ids(ARTIFACTS_TYPE):
        await add_stored(ledger, store, stream_id)
    for stream_id in await store.stream_ids(MODEL_TYPE):
        await add_references(ledger, executor, stream_id)
    return ledger


async def add_stored(ledger: Ledger, store: EventStore, stream_id: str) -> None:
    for stored in await store.read_stream(stream_id):
        event = store.codec.decode(stored.envelope)
        if isinstance(event, BlobStored):
            ledger.stored[event.sha256].append(
                StoredBy(event.model_id, stored.envelope.occurred_at, event.size)
            )


async def add_references(ledger: Ledger, executor: CommandExecutor, stream_id: str) -> None:
    version_number, state = await executor.state_of(stream_id, MODEL)
    if state.deleted:
        # A deleted model names nothing: its files may be collected once the grace period
        # after the deletion (the tombstone is the stream's last event) has passed.
        [tombstone] = await executor.store.read_stream(stream_id, after=version_number - 1)
        for version in state.versions.values():
            for entry in version.content.artifacts:
                ledger.released[entry.sha256] = tombstone.envelope.occurred_at
        return
    ledger.names[state.model_id] = state.name
    for version in state.versions.values():
        for entry in version.content.artifacts:
            ledger.references[entry.sha256].append(
                Reference(
                    state.model_id,
                    state.name,
                    version.number,
                    entry.path,
                    entry.external,
                    entry.uri,
                )
            )


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One blob that needs attention (or, for an orphan, may be collected)."""

    status: str  # missing | corrupt | orphan
    digest: str
    size: int | None
    detail: str
    referenced_by: list[str] = []
    stored_for: list[str] = []
    age_seconds: int | None = None


class Leftover(msgspec.Struct, frozen=True, kw_only=True):
    """A file in ``blobs/incoming/`` (an upload a killed process left behind)."""

    key: str
    size: int
    age_seconds: int


class AuditReport(msgspec.Struct, kw_only=True):
    blobs_held: int
    bytes_held: int
    blobs_checked: int
    bytes_checked: int
    sampled: bool
    findings: list[Finding]
    incoming: list[Leftover]
    collected: list[str] = []  # digests deleted by --gc
    swept: list[str] = []  # incoming keys deleted by --gc
    kept: list[str] = []  # orphans the collector found referenced or stored again

    def count(self, status: str) -> int:
        return sum(1 for f in self.findings if f.status == status)

    @property
    def ok(self) -> bool:
        """Nothing missing and nothing corrupt (orphans are not wrong, only waste)."""
        return not any(f.status in (MISSING, CORRUPT) for f in self.findings)


def _digest(sha256: str) -> str:
    return f"sha256:{sha256}"


def _age(now: datetime, *times: datetime | None) -> int:
    latest = max(t for t in times if t is not None)
    return max(0, int((now - latest).total_seconds()))


async def rehash(blobs: BlobStore, held: Held) -> str | None:
    """None when the blob's bytes hash to its name; else what is wrong with them."""
    assert held.sha256 is not None
    digest = hashlib.sha256()
    count = 0
    async for chunk in blobs.read(held.sha256, 0, held.size):
        digest.update(chunk)
        count += len(chunk)
    if count != held.size:
        return f"listed with {held.size} bytes, read {count}"
    if digest.hexdigest() != held.sha256:
        return f"its bytes hash to sha256:{digest.hexdigest()}"
    return None


async def audit_blobs(
    ledger: Ledger,
    blobs: BlobStore,
    inventory: Inventory,
    *,
    now: datetime,
    sample: int | None = None,
    progress: Progress | None = None,
    listed: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """Re-hash every held blob (or ``sample`` of them, at random) and compare the store
    with the ledger. ``listed(blobs, bytes)`` is told the totals before re-hashing."""
    held = {h.sha256: h async for h in inventory.blobs() if h.sha256 is not None}
    incoming = [
        Leftover(key=h.key, size=h.size, age_seconds=_age(now, h.written_at))
        async for h in inventory.incoming()
    ]
    chosen = list(held.values())
    if sample is not None and sample < len(chosen):
        chosen = random.sample(chosen, sample)
    if listed is not None:
        listed(len(chosen), sum(h.size for h in chosen))
    findings: list[Finding] = []
    done_blobs = done_bytes = 0
    for item in chosen:
        assert item.sha256 is not None
        problem = await rehash(blobs, item)
        recorded = ledger.recorded_size(item.sha256)
        if problem is None and recorded is not None and recorded != item.size:
            problem = f"holds {item.size} bytes; {recorded} were recorded"
        if problem is not None:
            findings.append(_finding(ledger, CORRUPT, item.sha256, item.size, problem))
        done_blobs, done_bytes = done_blobs + 1, done_bytes + item.size
        if progress is not None:
            progress(done_blobs, done_bytes)
    for sha256, references in sorted(ledger.references.items()):
        if sha256 not in held and any(r.needs_bytes for r in references):
            findings.append(
                _finding(
                    ledger, MISSING, sha256, None, "a version names it; the store does not hold it"
                )
            )
    for sha256, item in sorted(held.items()):
        if not ledger.references.get(sha256):
            finding = _finding(ledger, ORPHAN, sha256, item.size, "no version names it")
            age = _age(
                now, item.written_at, ledger.last_stored(sha256), ledger.released.get(sha256)
            )
            findings.append(msgspec.structs.replace(finding, age_seconds=age))
    return AuditReport(
        blobs_held=len(held),
        bytes_held=sum(h.size for h in held.values()),
        blobs_checked=done_blobs,
        bytes_checked=done_bytes,
        sampled=len(chosen) < len(held),
        findings=findings,
        incoming=incoming,
    )


def _finding(ledger: Ledger, status: str, sha256: str, size: int | None, detail: str) -> Finding:
    references: Iterable[Reference] = ledger.references.get(sha256, ())
    return Finding(
        status=status,
        digest=_digest(sha256),
        size=size,
        detail=detail,
        referenced_by=[r.label() for r in references if r.needs_bytes or status != MISSING],
        stored_for=sorted(
            {ledger.names.get(s.model_id, s.model_id) for s in ledger.stored.get(sha256, ())}
        ),
    )
