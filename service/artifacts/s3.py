"""The S3-compatible blob store (AWS S3, MinIO, ...), through ``obstore``. I/O.

``obstore`` (Rust ``object_store``) streams both ways from asyncio without a thread per
request, and reads the usual ``AWS_*`` variables (keys, region, ``AWS_ENDPOINT_URL``),
which is why it was chosen over boto3 (blocking) and fsspec (a layer more, same engine).

An upload goes straight to the blob's key as a multipart upload fed by the verifying
iterator: when the digest does not match (or the size limit is passed, or the client
goes away) the iterator raises before the upload completes, ``obstore`` aborts it, and the
key never appears. A key already present is not written again (the bytes are still read
and hashed). Two concurrent uploads of the same bytes may both complete; both wrote the
bytes the name promises, so the blob is the same either way.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from datetime import timedelta
from typing import Any

import obstore
from obstore.exceptions import BaseError
from obstore.store import S3Store

from service.artifacts.blobstore import CHUNK, BlobStoreUnavailableError, Put, blob_key, hashed

# Parts held in memory at once: PART_SIZE * PARTS_IN_FLIGHT bounds an upload's memory.
PART_SIZE = 8 * 1024 * 1024
PARTS_IN_FLIGHT = 4


class S3BlobStore:
    def __init__(self, url: str, **config: Any) -> None:
        """``url`` is ``s3://bucket/prefix``; ``config`` adds to or overrides what the
        ``AWS_*`` variables say (``endpoint``, ``access_key_id``, ``region``, ...)."""
        endpoint = str(config.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL", ""))
        self.url = url
        self._store = S3Store.from_url(
            url,
            client_options={"allow_http": endpoint.startswith("http://")},
            retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=30)},
            **config,
        )

    @property
    def object_store(self) -> S3Store:
        """The obstore handle: upload sessions, presigned URLs, the audit's listing and the
        collector's deletes, all under the same root."""
        return self._store

    async def size_of(self, sha256: str) -> int | None:
        try:
            meta = await obstore.head_async(self._store, blob_key(sha256))
        except FileNotFoundError:
            return None
        except BaseError as exc:
            raise BlobStoreUnavailableError(str(exc)) from exc
        return meta["size"]

    async def put(self, sha256: str, chunks: AsyncIterable[bytes], *, max_bytes: int) -> Put:
        verified = _counted(hashed(chunks, sha256, max_bytes))
        if await self.size_of(sha256) is not None:
            async for _ in verified:
                pass
            return Put(size=verified.size, created=False)
        try:
            await obstore.put_async(
                self._store,
                blob_key(sha256),
                verified,
                chunk_size=PART_SIZE,
                max_concurrency=PARTS_IN_FLIGHT,
            )
        except BaseError as exc:
            if verified.error is not None:
                raise verified.error from None
            raise BlobStoreUnavailableError(str(exc)) from exc
        return Put(size=verified.size, created=True)

    async def read(self, sha256: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
        if start >= end:
            return
        try:
            result = await obstore.get_async(
                self._store, blob_key(sha256), options={"range": (start, end)}
            )
            async for chunk in result.stream(min_chunk_size=CHUNK):
                yield bytes(chunk)
        except FileNotFoundError:
            return  # missing bytes: the verifier reports the blob as corrupt
        except BaseError as exc:
            raise BlobStoreUnavailableError(str(exc)) from exc


class _counted:  # noqa: N801 - an iterator wrapper, named like the function it replaces
    """Pass chunks on, counting bytes and keeping the error that stopped them (obstore
    re-raises an iterator's error wrapped in its own)."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self.size = 0
        self.error: Exception | None = None

    def __aiter__(self) -> _counted:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            raise
        except Exception as exc:
            self.error = exc
            raise
        self.size += len(chunk)
        return chunk
