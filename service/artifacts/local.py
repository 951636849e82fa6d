"""The file system blob store (the default): ``<data dir>/blobs/sha256/ab/abcdef...``. I/O.

An upload is written to a temporary file in ``blobs/incoming/`` (same file system),
fsynced, made read-only, then hard-linked to its name, which fails if the name exists:
a stored blob is never overwritten, and a reader never sees a half-written one. The
temporary file is removed whatever happens (a digest mismatch, a size limit, a client
that goes away); only a killed process can leave one behind, and it is never a blob.
Blocking file calls run in worker threads, one ``CHUNK`` at a time.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import BinaryIO

from service.artifacts.blobstore import CHUNK, Put, blob_key, hashed

INCOMING = "blobs/incoming"


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
        verified = hashed(chunks, sha256, max_bytes)
        if await self.size_of(sha256) is not None:
            # Held already: the bytes still have to hash to the name, but need no copy.
            size = 0
            async for chunk in verified:
                size += len(chunk)
            return Put(size=size, created=False)
        incoming = self.root / INCOMING
        await asyncio.to_thread(incoming.mkdir, parents=True, exist_ok=True)
        fd, name = await asyncio.to_thread(tempfile.mkstemp, dir=incoming, prefix=sha256[:16])
        temporary = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                size = await _write(handle, verified)
                await asyncio.to_thread(_sync, handle)
            created = await asyncio.to_thread(self._publish, temporary, self.path_of(sha256))
            return Put(size=size, created=created)
        finally:
            await asyncio.to_thread(temporary.unlink, missing_ok=True)

    async def read(self, sha256: str, start: int, end: int) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(self.path_of(sha256).open, "rb")
        try:
            await asyncio.to_thread(handle.seek, start)
            left = end - start
            while left > 0:
                chunk = await asyncio.to_thread(handle.read, min(CHUNK, left))
                if not chunk:
                    return  # shorter than recorded: the verifier reports it
                left -= len(chunk)
                yield chunk
        finally:
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


async def _write(handle: BinaryIO, chunks: AsyncIterable[bytes]) -> int:
    """Write ``chunks`` in ``CHUNK``-sized batches (one thread hop each); the byte count."""
    size = 0
    batch: list[bytes] = []
    pending = 0
    async for chunk in chunks:
        batch.append(chunk)
        pending += len(chunk)
        if pending >= CHUNK:
            await asyncio.to_thread(handle.write, b"".join(batch))
            size, batch, pending = size + pending, [], 0
    if batch:
        await asyncio.to_thread(handle.write, b"".join(batch))
    return size + pending


def _sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def sync_directory(directory: Path) -> None:
    """Make the new name durable: the directory entry is data too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
