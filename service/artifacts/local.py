"""The file system blob store (the default): ``<data dir>/blobs/sha256/ab/abcdef...``. I/O.

An upload is written to a temporary file in ``blobs/incoming/`` (same file system),
fsynced, made read-only, then hard-linked to its name, which fails if the name exists:
a stored blob is never overwritten, and a reader never sees a half-written one. The
temporary file is removed whatever happens (a digest mismatch, a size limit, a client
that goes away); only a killed process can leave one behind, and it is never a blob.
Blocking file calls run in worker threads, one ``CHUNK`` at a time (but reads of files
of at most ``INLINE_BYTES``, quicker than the trip); an upload's batch is hashed and
written there while the next one is received.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from service.artifacts.blobstore import (
    CHUNK,
    INLINE_BYTES,
    BlobTooLargeError,
    DigestMismatchError,
    Put,
    blob_key,
)

if TYPE_CHECKING:
    from hashlib import _Hash as Hasher

INCOMING = "blobs/incoming"
# How many bytes of an upload are written before they are synced and their cached pages
# released (see ``_BatchWriter``): bounds the fresh pages one upload takes.
RELEASE = 64 * 1024 * 1024
DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", 4)


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, sha256: str) -> Path:
        return self.root / blob_key(sha256)

    async def size_of(self, sha256: str) -> int | None:
        try:
            return (await asyncio.to_thread(self.path_of(sha256).stat)).st_size
        except FileNotFoundError:
            return None

    async def put(self, sha256: str, chunks: AsyncIterable[bytes], *, max_bytes: int) -> Put:
        final = self.path_of(sha256)
        # The file calls before and after the bytes run in one trip to a thread each: on a
        # small file, a trip per call cost more than the bytes (bench/README.md).
        opened = await asyncio.to_thread(self._open_incoming, final)
        if opened is None:
            # Held already: the bytes still have to hash to the name, but need no copy.
            size, digest = await _consume(chunks, max_bytes, None)
            _check(sha256, digest)
            return Put(size=size, created=False)
        fd, temporary = opened
        published = False
        try:
            with os.fdopen(fd, "wb", buffering=0) as handle:
                size, digest = await _consume(chunks, max_bytes, handle)
                _check(sha256, digest)
                created = await asyncio.to_thread(self._finish, handle.fileno(), temporary, final)
                published = True
            return Put(size=size, created=created)
        finally:
            if not published:
                await asyncio.to_thread(temporary.unlink, missing_ok=True)

    def _open_incoming(self, final: Path) -> tuple[int, Path] | None:
        """A new temporary file for ``final``'s bytes, or None when the blob is held."""
        if final.exists():
            return None
        incoming = self.root / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=incoming, prefix=final.name[:16])
        return fd, Path(name)

    def _finish(self, fd: int, temporary: Path, final: Path) -> bool:
        """Make the verified bytes durable and give them their name; the temporary name
        goes either way. False when the blob existed already."""
        try:
            sync_and_release(fd)
            return self._publish(temporary, final)
        finally:
            temporary.unlink(missing_ok=True)

    async def read(self, sha256: str, start: int, end: int) -> AsyncIterator[bytes]:
        if end - start <= INLINE_BYTES:
            # A small file (MLmodel and friends, fetched in bursts): read where we are, as
            # the trip to a thread would cost more than the read.
            yield _read_range(self.path_of(sha256), start, end)
            return
        if end - start <= CHUNK:
            # One chunk: open, read and close in one trip to a thread.
            yield await asyncio.to_thread(_read_range, self.path_of(sha256), start, end)
            return
        # The next chunk is read while the caller handles this one (one read in flight).
        handle = await asyncio.to_thread(self.path_of(sha256).open, "rb")
        reading: asyncio.Future[bytes] | None = None
        try:
            await asyncio.to_thread(handle.seek, start)
            left = end - start
            next_chunk = asyncio.ensure_future(asyncio.to_thread(handle.read, min(CHUNK, left)))
            reading = next_chunk
            while left > 0:
                chunk = await next_chunk
                reading = None
                if not chunk:
                    return  # shorter than recorded: the verifier reports it
                left -= len(chunk)
                if left > 0:
                    next_chunk = asyncio.ensure_future(
                        asyncio.to_thread(handle.read, min(CHUNK, left))
                    )
                    reading = next_chunk
                yield chunk
        finally:
            if reading is not None:
                # A read still runs in its thread: the file is closed once it is done.
                await asyncio.wait([reading])
            await asyncio.to_thread(handle.close)

    def link_verified(self, verified: Path, final: Path) -> bool:
        """Name a durable file whose bytes were checked against ``final``'s digest (an
        upload session's); False when the blob existed already."""
        return self._publish(verified, final)

    @staticmethod
    def _publish(temporary: Path, final: Path) -> bool:
        """Give the verified file its name unless a blob has it already (False then)."""
        temporary.chmod(0o444)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(temporary, final)
        except FileExistsError:
            return False
        sync_directory(final.parent)
        return True


def _read_range(path: Path, start: int, end: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, end - start, start)
    finally:
        os.close(fd)


async def _consume(
    chunks: AsyncIterable[bytes], max_bytes: int, handle: BinaryIO | None
) -> tuple[int, Hasher]:
    """Hash ``chunks`` (and write them to ``handle``) in ``CHUNK``-sized batches; the byte
    count and the digest. BlobTooLargeError past ``max_bytes``.

    A batch is hashed and written in a worker thread (both let go of the GIL) while the
    event loop receives the next one; one batch in flight at a time keeps memory flat and
    the bytes in order. Hashing in the loop, between receives, made the loop the upload's
    bottleneck."""
    writer = _BatchWriter(handle)
    size = 0
    batch: list[bytes] = []
    pending = 0
    storing: asyncio.Future[None] | None = None
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise BlobTooLargeError(max_bytes)
            batch.append(chunk)
            pending += len(chunk)
            if pending >= CHUNK:
                if storing is not None:
                    await storing
                storing = asyncio.ensure_future(asyncio.to_thread(writer.store, b"".join(batch)))
                batch, pending = [], 0
        if storing is not None:
            await storing
        storing = None
        if batch:
            await asyncio.to_thread(writer.store, b"".join(batch))
    finally:
        if storing is not None:
            # Cut short (the client left, too large): the file may only close once the
            # thread's write is done.
            await asyncio.wait([storing])
    return size, writer.digest


class _BatchWriter:
    """Hashes and writes batches in order (one thread at a time), and every ``RELEASE``
    bytes makes them durable and hands their page-cache pages back (``sync_and_release``):
    a big upload then reuses the pages it freed instead of taking fresh ones throughout."""

    def __init__(self, handle: BinaryIO | None) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.written = 0
        self.released = 0

    def store(self, data: bytes) -> None:
        self.digest.update(data)
        if self.handle is None:
            return
        _write_all(self.handle, data)
        self.written += len(data)
        if self.written - self.released >= RELEASE and hasattr(os, "posix_fadvise"):
            # Only clean pages can be released: sync them first (Linux only, as fadvise).
            fd = self.handle.fileno()
            os.fdatasync(fd)
            os.posix_fadvise(fd, self.released, self.written - self.released, DONTNEED)
            self.released = self.written


def _write_all(handle: BinaryIO, data: bytes) -> None:
    # An unbuffered file may write less than asked (a signal, a full disk's last bytes).
    view = memoryview(data)
    while view:
        written = handle.write(view)
        if written is None:
            raise BlockingIOError("a blob file is never non-blocking")
        view = view[written:]


def sync_and_release(fd: int) -> None:
    """Make the bytes durable, then hand their page-cache pages back to the kernel.

    A blob is written once and read rarely (a deploy, an audit): kept cached, every upload
    takes fresh pages and pushes out pages others use. Measured on the bench machine,
    writing into fresh pages cost 2 to 6 times the CPU of writing into pages just freed, and
    sustained uploads ran at half the rate (bench/README.md, "Model files"). A download
    then reads the bytes back from disk."""
    os.fsync(fd)
    if hasattr(os, "posix_fadvise"):  # Linux; elsewhere the pages just stay cached
        os.posix_fadvise(fd, 0, 0, DONTNEED)


def _check(sha256: str, digest: Hasher) -> None:
    if digest.hexdigest() != sha256:
        raise DigestMismatchError(sha256, digest.hexdigest())


def sync_directory(directory: Path) -> None:
    """Make the new name durable: the directory entry is data too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
