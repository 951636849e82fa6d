"""The file system blob store (the default): ``<data dir>/blobs/sha256/ab/abcdef...``. I/O.

An upload is written to a temporary file in ``blobs/incoming/`` (same file system),
fsynced, made read-only, then hard-linked to its name, which fails if the name exists:
a stored blob is never overwritten, and a reader never sees a half-written one. The
temporary file is removed whatever happens (a digest mismatch, a size limit, a client
that goes away); only a killed process can leave one behind, and it is never a blob.
Blocking file calls run in worker threads, one ``CHUNK`` at a time (but reads of files
of at most ``INLINE_BYTES``, quicker than the trip); an upload's batch is hashed in one
and written in another while the next one is received.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from service.artifacts.blobstore import (
    CHUNK,
    INLINE_BYTES,
    BlobTooLargeError,
    DigestMismatchError,
    Put,
    blob_key,
    settle,
)

if TYPE_CHECKING:
    from hashlib import _Hash as Hasher

INCOMING = "blobs/incoming"
# How many bytes of an upload are written before they are synced and their cached pages
# released (see ``_PageRelease``): bounds the fresh pages one upload takes.
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

    async def read(self, sha256: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
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
        # Opened here, not in a thread: a caller cancelled while a thread opened it would
        # never get the file to close (opening an existing file costs microseconds).
        handle = self.path_of(sha256).open("rb")
        reading: asyncio.Future[bytes] | None = None
        try:
            handle.seek(start)
            left = end - start
            next_read = asyncio.ensure_future(asyncio.to_thread(handle.read, min(CHUNK, left)))
            reading = next_read
            while left > 0:
                # Shielded: cancelling the caller must not forget a read its thread still
                # runs on this file (the finally below closes the file after it).
                chunk = await asyncio.shield(next_read)
                reading = None
                if not chunk:
                    return  # shorter than recorded: the verifier reports it
                left -= len(chunk)
                if left > 0:
                    next_read = asyncio.ensure_future(
                        asyncio.to_thread(handle.read, min(CHUNK, left))
                    )
                    reading = next_read
                yield chunk
        finally:
            # No await here: a caller cut short inside a cancelled scope (the client left)
            # is cancelled again at every await, and the file would stay open until
            # collected.
            if reading is not None and not reading.done():
                # A read still runs in its thread: the file is closed once it is done.
                reading.add_done_callback(functools.partial(_close_after_read, handle))
            else:
                handle.close()

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


def _close_after_read(handle: BinaryIO, read: asyncio.Future[bytes]) -> None:
    settle(read)
    handle.close()


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

    The event loop only gathers the chunks as they came (joining them would be a copy on
    the loop, which bounds an upload). A batch is hashed in one worker thread and written
    in another at the same time (both let go of the GIL), while the loop gathers the next;
    each waits for its own lane's previous batch, so the bytes stay in order, and at most
    one batch in flight keeps memory flat. Every ``RELEASE`` bytes the written pages are
    synced and released in a third lane, beside the writes that follow (see
    ``_PageRelease``). Everything started has finished when this returns or raises: the
    file may then be closed."""
    digest = hashlib.sha256()
    release = None if handle is None else _PageRelease(handle.fileno())
    size = 0
    batch: list[bytes] = []
    pending = 0
    in_flight: list[asyncio.Future[None]] = []

    def start(parts: list[bytes]) -> list[asyncio.Future[None]]:
        lanes: list[asyncio.Future[None]] = [
            asyncio.ensure_future(asyncio.to_thread(_hash_all, digest, parts))
        ]
        if handle is not None:
            lanes.append(asyncio.ensure_future(asyncio.to_thread(_write_parts, handle, parts)))
        return lanes

    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise BlobTooLargeError(max_bytes)
            batch.append(chunk)
            pending += len(chunk)
            if pending >= CHUNK:
                await _settled(in_flight)
                if release is not None:
                    await release.after(size - pending)
                in_flight = start(batch)
                batch, pending = [], 0
        await _settled(in_flight)
        in_flight = start(batch) if batch else []
        await _settled(in_flight)
        if release is not None:
            await release.finished()  # a failed sync fails the upload
    finally:
        # Cut short (the client left, too large, a lane failed): the file may only close
        # once the threads' work on it is done. What they raised then is not news.
        started = [*in_flight, *([] if release is None else release.pending())]
        if started:
            await asyncio.wait(started)
            for work in started:
                settle(work)
    return size, digest


async def _settled(lanes: list[asyncio.Future[None]]) -> None:
    """Wait for every lane of a batch; the first failure is raised once all are done."""
    if lanes:
        await asyncio.wait(lanes)
        for lane in lanes:
            lane.result()


def _hash_all(digest: Hasher, parts: list[bytes]) -> None:
    for data in parts:
        digest.update(data)


def _write_parts(handle: BinaryIO, parts: list[bytes]) -> None:
    for data in parts:
        _write_all(handle, data)


class _PageRelease:
    """Syncs an upload's written bytes and hands their page-cache pages back every
    ``RELEASE`` bytes, in a thread of its own beside the writes that follow: a big upload
    then reuses the pages it freed instead of taking fresh ones throughout, and the sync
    no longer stalls the writes (it took a fifth of the writing thread's time when it ran
    in line). One sync at a time; the next waits for it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.released = 0
        self.syncing: asyncio.Future[None] | None = None

    async def after(self, written: int) -> None:
        """``written`` bytes are in the file (their writes are done)."""
        if written - self.released < RELEASE or not hasattr(os, "posix_fadvise"):
            return
        await self.finished()
        start, self.released = self.released, written
        self.syncing = asyncio.ensure_future(
            asyncio.to_thread(_sync_range, self.fd, start, written)
        )

    def pending(self) -> list[asyncio.Future[None]]:
        return [] if self.syncing is None else [self.syncing]

    async def finished(self) -> None:
        if self.syncing is not None:
            syncing, self.syncing = self.syncing, None
            await asyncio.wait([syncing])
            syncing.result()


def _sync_range(fd: int, start: int, end: int) -> None:
    # Only clean pages can be released: sync them first (Linux only, as fadvise).
    os.fdatasync(fd)
    os.posix_fadvise(fd, start, end - start, DONTNEED)


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
