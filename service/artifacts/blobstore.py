"""The blob store contract, and the verification every backend shares. I/O: through a
backend.

A blob is immutable bytes named by their sha256 (``blobs/sha256/ab/abcdef...``). ``put``
streams the bytes in while hashing them and makes the blob visible only once the digest
matched (never overwriting a stored blob); ``read`` streams a byte range out. Neither
buffers a whole blob: memory stays flat whatever the size.

On the way out every byte is hashed again (``verified_read``): a range read hashes the
whole blob, sending only the range, and the last piece of the range is held back until
the digest is confirmed, so a corrupt blob ends the response early (the client sees a
short body and an error), never a complete-looking wrong one.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol

from events.errors import ValidationError

CHUNK = 1024 * 1024
# Up to this many bytes are read and hashed in the event loop (microseconds: a model's
# MLmodel, conda.yaml and friends), more in a worker thread while the loop sends the
# previous chunk. A trip to a thread costs tens of microseconds and a wait for the GIL.
INLINE_BYTES = 64 * 1024


def blob_key(sha256: str) -> str:
    """Where a blob lives in any backend, relative to the store's root."""
    return f"blobs/sha256/{sha256[:2]}/{sha256}"


class BlobTooLargeError(Exception):
    """The upload passed the configured size limit (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a blob holds at most {limit} bytes (MODELREG_ARTIFACTS_MAX_BYTES)")
        self.limit = limit


class DigestMismatchError(ValidationError):
    """The uploaded bytes hash to another digest than the one declared (422)."""

    def __init__(self, declared: str, actual: str) -> None:
        super().__init__(
            "digest",
            "digest_mismatch",
            f"the body hashes to sha256:{actual}, not the declared sha256:{declared};"
            " nothing was kept",
            declared=f"sha256:{declared}",
            actual=f"sha256:{actual}",
        )


class CorruptBlobError(Exception):
    """A stored blob no longer hashes to its name: the response is cut, never completed."""


class BlobStoreUnavailableError(Exception):
    """The backend cannot be reached now; retrying later may succeed (503)."""


@dataclass(frozen=True, slots=True)
class Put:
    """What an upload did: ``created`` is False when the store already held the bytes."""

    size: int
    created: bool


class BlobStore(Protocol):
    async def size_of(self, sha256: str) -> int | None:
        """The stored blob's size, or None when the store does not hold it."""
        ...

    async def put(self, sha256: str, chunks: AsyncIterable[bytes], *, max_bytes: int) -> Put:
        """Store ``chunks`` as blob ``sha256`` if they hash to it (else DigestMismatchError
        and nothing kept), reading all of them even when the blob is already held."""
        ...

    def read(self, sha256: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """Bytes ``start`` to ``end`` (exclusive) of a stored blob, unverified."""
        ...


async def hashed(chunks: AsyncIterable[bytes], sha256: str, max_bytes: int) -> AsyncIterator[bytes]:
    """``chunks`` passed on while hashed and counted; raises BlobTooLargeError past
    ``max_bytes`` and DigestMismatchError at the end, before the consumer sees the end."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise BlobTooLargeError(max_bytes)
        digest.update(chunk)
        yield chunk
    if digest.hexdigest() != sha256:
        raise DigestMismatchError(sha256, digest.hexdigest())


async def verified_read(
    store: BlobStore, sha256: str, size: int, start: int, end: int
) -> AsyncGenerator[bytes, None]:
    """Bytes ``start`` to ``end`` of a blob of ``size`` bytes, the whole blob re-hashed on
    the way; CorruptBlobError instead of the range's last piece when it does not match.

    Each chunk is hashed in a worker thread (hashlib lets go of the GIL) while the event
    loop sends the one before and the store reads the next: hashing in the loop made it
    the download's bottleneck. Chunks are hashed in order, one at a time."""
    digest = hashlib.sha256()
    hashing: asyncio.Future[None] | None = None
    offset = 0
    held: bytes = b""
    try:
        # Closed on the way out, not when collected: a download cut short must let go
        # of the store's file or stream at once.
        async with aclosing(store.read(sha256, 0, size)) as chunks:
            async for chunk in chunks:
                if hashing is not None:
                    await hashing
                    hashing = None
                if len(chunk) <= INLINE_BYTES:
                    digest.update(chunk)  # quicker than the trip to a thread
                else:
                    hashing = asyncio.ensure_future(asyncio.to_thread(digest.update, chunk))
                lo, hi = max(start - offset, 0), min(end - offset, len(chunk))
                offset += len(chunk)
                if lo < hi:
                    if held:
                        yield held
                    held = chunk[lo:hi]  # the chunk itself, not a copy, when it is whole
        if hashing is not None:
            await hashing
            hashing = None
    finally:
        if hashing is not None:
            # Cut short (the client left): the thread finishes on its own; just let it.
            hashing.add_done_callback(settle)
    if offset != size or digest.hexdigest() != sha256:
        raise CorruptBlobError(
            f"blob sha256:{sha256} holds {offset} bytes hashing to sha256:{digest.hexdigest()}"
        )
    if held:
        yield held


async def verified_bytes(store: BlobStore, sha256: str, size: int) -> bytes:
    """A whole blob, re-hashed: for files small enough to hold (CorruptBlobError when
    its bytes no longer hash to its name)."""
    return b"".join([chunk async for chunk in verified_read(store, sha256, size, 0, size)])


def settle(future: asyncio.Future[Any]) -> None:
    """Fetch an abandoned future's outcome (a hashing, a read, a write cut short), so
    asyncio does not report it as lost: what it raised is not news."""
    if not future.cancelled():
        future.exception()
