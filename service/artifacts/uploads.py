"""Resumable uploads: a session per blob being uploaded, its bytes appended chunk by chunk
at the committed offset, verified whole and published only when the client commits.
I/O: through a session backend (``uploads_local``, ``uploads_s3``).

Modelled on the OCI distribution spec's chunked blob upload (POST opens a session, PATCH
with ``Content-Range`` appends at the offset the server reports, PUT commits, DELETE
aborts), with the digest and size declared when the session opens, as in tus's
``Upload-Length``. A session lives in the blob store beside the blobs (file store:
``blobs/incoming/uploads/<id>/``; S3: ``uploads/<id>/``), never in the event log: only a
verified blob becomes an event (``artifact.blob_stored``), the half-uploaded bytes are
scratch. Keeping the session there rather than in a process means a restarted (or killed)
server, or another replica on the same S3 bucket, resumes where the last one stopped.

No hash state outlives the process: the commit re-reads the whole upload and hashes it
while publishing (the file store skips that read when the same process wrote and hashed
every byte in order), so a crash between chunks cannot leave a hasher that disagrees with
the bytes, and the digest checked is the digest of exactly the bytes that get the name.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

import msgspec

from events.errors import ConflictError, NotFoundError, ValidationError
from service.artifacts.blobstore import DigestMismatchError, Put

T = TypeVar("T")

SESSION_FILE = "session.json"
# Expired sessions are swept when one is opened, at most once a minute per process (a
# sweep reads every session's record: a GET each on S3), a hundred at a time, so a busy
# registry still collects every expired session over a few sweeps.
SWEEP_LIMIT = 100
SWEEP_INTERVAL = timedelta(minutes=1)
_last_sweep: dict[str, datetime] = {}
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Session(msgspec.Struct, frozen=True, kw_only=True):
    """What the server promised when the session opened: which model, which bytes."""

    id: str
    model_id: str
    sha256: str
    size: int
    actor: str
    created_at: datetime
    expires_at: datetime
    # Presigned: the client PUTs the whole blob to the store's staging key itself.
    direct: bool = False


SESSION_CODEC = msgspec.json.Encoder()


def decode_session(raw: bytes) -> Session:
    return msgspec.json.decode(raw, type=Session)


def new_session(
    *, model_id: str, sha256: str, size: int, actor: str, now: datetime, ttl: float, direct: bool
) -> Session:
    # 192 random bits: a session id is not a credential (every call is authorised on the
    # model too) but must not be guessable from another.
    return Session(
        id=secrets.token_urlsafe(24),
        model_id=model_id,
        sha256=sha256,
        size=size,
        actor=actor,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl),
        direct=direct,
    )


class OffsetMismatchError(Exception):
    """A chunk did not start at the committed offset (416, with the offset to resume at)."""

    def __init__(self, offset: int, start: int) -> None:
        super().__init__(
            f"the upload has {offset} bytes committed; a chunk must start there, not at {start}"
        )
        self.offset = offset


class UploadBusyError(ConflictError):
    """Another request is appending to (or committing) the session now (409, retry)."""

    code = "upload_busy"


class PastDeclaredSizeError(ValidationError):
    """The chunks carry more bytes than the session declared (the bytes before stay)."""

    def __init__(self, size: int) -> None:
        super().__init__(
            "body",
            "declared_size",
            f"the session declared {size} bytes; the bytes past that were not kept",
            size=size,
        )


class IncompleteUploadError(ConflictError):
    """Commit before every declared byte arrived (409, with the offset to resume at)."""

    code = "upload_incomplete"

    def __init__(self, offset: int, size: int) -> None:
        super().__init__(
            f"the upload holds {offset} of its {size} bytes; send the rest before committing",
            offset=offset,
            size=size,
        )


class PresignUnsupportedError(ValidationError):
    """Presigned URLs need an S3 store; the file store has no URL a client could PUT to."""

    def __init__(self, field: str) -> None:
        super().__init__(
            field,
            "s3_store",
            "presigned URLs are offered only when the blob store is S3 (MODELREG_ARTIFACTS_URL"
            " = s3://...); upload through the API instead",
        )


class UploadBackend(Protocol):
    """Where a store keeps its sessions. ``append`` and ``publish`` run under the session's
    lock (``session_lock``), so each sees the committed bytes alone."""

    part_size: int
    root_key: str  # names the store's sessions, for this process's bookkeeping

    async def create(self, session: Session) -> None: ...

    async def load(self, session_id: str) -> Session | None:
        """The session, or None when there is none (never opened, committed, aborted)."""
        ...

    async def offset(self, session: Session) -> int:
        """How many bytes are committed: a resumed upload sends from here."""
        ...

    async def append(self, session: Session, chunks: AsyncIterable[bytes]) -> int:
        """Append ``chunks`` at the committed offset; the new offset. Bytes that arrived
        before ``chunks`` raised (a client gone) are committed as far as the backend can
        (every byte for files, whole parts for S3); then the error propagates."""
        ...

    async def publish(self, session: Session) -> Put:
        """Hash every byte of the upload; give them the blob's name if they match
        (DigestMismatchError otherwise, nothing published)."""
        ...

    async def remove(self, session_id: str) -> None: ...

    async def session_ids(self) -> list[str]: ...

    async def upload_url(self, session: Session, expires_in: timedelta) -> str:
        """A presigned PUT URL of the session's staging key (PresignUnsupportedError)."""
        ...


_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def session_lock(session_id: str) -> asyncio.Lock:
    """One writer per session in this process: a second PATCH is refused while one runs,
    rather than interleaving bytes at the same offset."""
    lock = _locks.get(session_id)
    if lock is None:
        lock = _locks[session_id] = asyncio.Lock()
    return lock


async def open_session(backend: UploadBackend, session: Session, now: datetime) -> None:
    # Never less often than sessions expire, so a short TTL is honoured promptly too.
    interval = min(SWEEP_INTERVAL, session.expires_at - session.created_at)
    last = _last_sweep.get(backend.root_key)
    if last is None or now - last >= interval:
        _last_sweep[backend.root_key] = now
        await sweep_expired(backend, now)
    await backend.create(session)


async def find_session(
    backend: UploadBackend, session_id: str, model_id: str, now: datetime
) -> Session:
    """The live session ``session_id`` of ``model_id``; NotFoundError for one that is
    unknown, expired or another model's (the same answer, so an id reveals nothing)."""
    session = await backend.load(session_id) if _plausible(session_id) else None
    if session is None or session.model_id != model_id or session.expires_at <= now:
        raise NotFoundError("no such upload session for this model", upload=session_id)
    return session


async def append_chunk(
    backend: UploadBackend, session: Session, start: int, chunks: AsyncIterable[bytes]
) -> int:
    """Append ``chunks`` at ``start``, which must be the committed offset (a retried chunk
    that was committed already is refused with the offset, never written twice)."""
    lock = session_lock(session.id)
    if lock.locked():
        raise UploadBusyError("another request is writing to this upload session now")
    async with lock:
        offset = await backend.offset(session)
        if start != offset:
            raise OffsetMismatchError(offset, start)
        return await backend.append(session, _within(chunks, session.size - offset, session.size))


async def commit(
    backend: UploadBackend, session: Session, record: Callable[[Put], Awaitable[T]]
) -> T:
    """Verify and publish the whole upload, ``record`` it, then forget the session. A
    digest mismatch forgets it too (nothing kept); an incomplete upload, or a ``record``
    that fails (the database away), keeps it, so the commit can simply be retried."""
    lock = session_lock(session.id)
    if lock.locked():
        raise UploadBusyError("another request is writing to this upload session now")
    async with lock:
        offset = await backend.offset(session)
        if offset > session.size:  # only a presigned PUT can overshoot: refused, dropped
            await backend.remove(session.id)
            raise PastDeclaredSizeError(session.size)
        if offset < session.size:
            raise IncompleteUploadError(offset, session.size)
        try:
            put = await backend.publish(session)
        except DigestMismatchError:
            await backend.remove(session.id)
            raise
        recorded = await record(put)
        await backend.remove(session.id)
        return recorded


async def abort(backend: UploadBackend, session: Session) -> None:
    async with session_lock(session.id):
        await backend.remove(session.id)


async def sweep_expired(backend: UploadBackend, now: datetime) -> int:
    """Remove up to SWEEP_LIMIT expired sessions (or ones whose record is unreadable); the
    number removed."""
    removed = 0
    for session_id in (await backend.session_ids())[:SWEEP_LIMIT]:
        session = await backend.load(session_id)
        expired = session is None or session.expires_at <= now
        if expired and not session_lock(session_id).locked():
            await backend.remove(session_id)
            removed += 1
    return removed


def _plausible(session_id: str) -> bool:
    # Ids are token_urlsafe: anything else cannot name a session (and never reaches a path).
    return _SESSION_ID.fullmatch(session_id) is not None


async def _within(chunks: AsyncIterable[bytes], room: int, size: int) -> AsyncIterator[bytes]:
    """``chunks`` up to ``room`` bytes; PastDeclaredSizeError after passing those on."""
    async for chunk in chunks:
        if len(chunk) > room:
            if room:
                yield chunk[:room]
            raise PastDeclaredSizeError(size)
        room -= len(chunk)
        yield chunk
