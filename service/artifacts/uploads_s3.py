"""Upload sessions of the S3 store: ``uploads/<id>/session.json``, one object per part
(``uploads/<id>/parts/<start offset, 20 digits>``), and, for a presigned session, the
staging object the client PUTs itself (``uploads/<id>/direct``). I/O.

A chunk is cut into ``part_size`` parts, each held in memory and PUT as its own object, so
a part exists whole or not at all: the committed offset is the length of the contiguous
run of parts from 0, read from a listing, with nothing else to keep in step. When a client
goes away the bytes of the part being filled are still PUT (a shorter part), so only a
killed server or an S3 outage loses bytes, at most ``part_size`` of them. (S3's own multipart upload would need its
upload id and part ETags carried across processes, which obstore does not expose; the
part objects cost the same, since the commit streams the bytes again anyway.)

The commit streams the parts (or the staging object) in order through the verifying
``S3BlobStore.put``: the bytes are hashed while they are written to the content address
as one multipart upload, which is aborted, so the name never appears, unless the digest
matched. The client can write the staging key but never the blob's key.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import BaseError

from events.errors import ConflictError
from service.artifacts.blobstore import BlobStoreUnavailableError, Put
from service.artifacts.s3 import S3BlobStore
from service.artifacts.uploads import SESSION_CODEC, SESSION_FILE, Session, decode_session

if TYPE_CHECKING:
    from obstore import ObjectMeta

UPLOADS = "uploads"
PARTS = "parts"
DIRECT = "direct"
DIGITS = 20
# Pieces read back at the commit: small, so obstore's upload copies each into its part
# buffer and lets it go (1 MiB pieces were held on the Python side, part after part).
STREAM_BYTES = 64 * 1024


class S3Uploads:
    def __init__(self, blobs: S3BlobStore, part_size: int) -> None:
        self.blobs = blobs
        self.part_size = part_size
        self._store = blobs.object_store
        self.root_key = blobs.url

    @staticmethod
    def prefix(session_id: str) -> str:
        return f"{UPLOADS}/{session_id}/"

    def staging_key(self, session_id: str) -> str:
        return f"{self.prefix(session_id)}{DIRECT}"

    async def create(self, session: Session) -> None:
        async with _unavailable_as_503():
            await obstore.put_async(
                self._store, self.prefix(session.id) + SESSION_FILE, SESSION_CODEC.encode(session)
            )

    async def load(self, session_id: str) -> Session | None:
        async with _unavailable_as_503():
            try:
                result = await obstore.get_async(
                    self._store, self.prefix(session_id) + SESSION_FILE
                )
            except FileNotFoundError:
                return None
            raw = bytes(await result.bytes_async())
        return decode_session(raw)

    async def offset(self, session: Session) -> int:
        if session.direct:
            async with _unavailable_as_503():
                try:
                    meta = await obstore.head_async(self._store, self.staging_key(session.id))
                except FileNotFoundError:
                    return 0
            return meta["size"]
        return sum(size for _, size in await self._parts(session.id))

    async def _parts(self, session_id: str) -> list[tuple[str, int]]:
        """(key, size) of the contiguous parts from offset 0, in order."""
        prefix = f"{self.prefix(session_id)}{PARTS}/"
        found: dict[int, ObjectMeta] = {}
        async with _unavailable_as_503():
            async for batch in obstore.list(self._store, prefix):
                for meta in batch:
                    start = meta["path"].rsplit("/", 1)[-1]
                    if start.isdigit():
                        found[int(start)] = meta
        parts: list[tuple[str, int]] = []
        offset = 0
        while offset in found and found[offset]["size"] > 0:
            meta = found[offset]
            parts.append((meta["path"], meta["size"]))
            offset += meta["size"]
        return parts

    async def append(self, session: Session, chunks: AsyncIterable[bytes]) -> int:
        if session.direct:
            raise _direct_only()
        offset = await self.offset(session)
        buffer = bytearray()
        try:
            async for chunk in chunks:
                buffer += chunk
                while len(buffer) >= self.part_size:
                    part = bytes(buffer[: self.part_size])
                    offset = await self._put_part(session, offset, part)
                    del buffer[: self.part_size]
        except BlobStoreUnavailableError:
            raise
        except Exception:
            # The client went away (or sent too much): the bytes that did arrive are still
            # the right bytes at the right offsets; keep them if S3 lets us.
            if buffer:
                with contextlib.suppress(BlobStoreUnavailableError):
                    await self._put_part(session, offset, bytes(buffer))
            raise
        if buffer:
            offset = await self._put_part(session, offset, bytes(buffer))
        return offset

    async def _put_part(self, session: Session, start: int, data: bytes) -> int:
        key = f"{self.prefix(session.id)}{PARTS}/{start:0{DIGITS}d}"
        async with _unavailable_as_503():
            await obstore.put_async(self._store, key, data)
        return start + len(data)

    async def publish(self, session: Session) -> Put:
        return await self.blobs.put(
            session.sha256, self._upload_bytes(session), max_bytes=session.size
        )

    async def _upload_bytes(self, session: Session) -> AsyncIterator[bytes]:
        keys = (
            [(self.staging_key(session.id), session.size)]
            if session.direct
            else await self._parts(session.id)
        )
        for key, _ in keys:
            async with _unavailable_as_503():
                try:
                    result = await obstore.get_async(self._store, key)
                except FileNotFoundError:
                    # Removed under us (the session aborted or swept by another replica).
                    raise ConflictError(
                        "the upload session lost its bytes while committing; start again"
                    ) from None
                async for chunk in result.stream(min_chunk_size=STREAM_BYTES):
                    yield bytes(chunk)

    async def remove(self, session_id: str) -> None:
        async with _unavailable_as_503():
            keys = [
                meta["path"]
                async for batch in obstore.list(self._store, self.prefix(session_id))
                for meta in batch
            ]
            if keys:
                await obstore.delete_async(self._store, keys)

    async def session_ids(self) -> list[str]:
        async with _unavailable_as_503():
            listing = await obstore.list_with_delimiter_async(self._store, f"{UPLOADS}/")
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in listing["common_prefixes"])

    async def upload_url(self, session: Session, expires_in: timedelta) -> str:
        async with _unavailable_as_503():
            return await obstore.sign_async(
                self._store, "PUT", self.staging_key(session.id), expires_in
            )


def _direct_only() -> Exception:
    return ConflictError(
        "this session was opened for a presigned upload: PUT the bytes to its upload_url"
    )


class _unavailable_as_503:  # noqa: N801 - used like contextlib.suppress
    """An S3 error other than a missing key becomes BlobStoreUnavailableError (503)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        if isinstance(error, BaseError) and not isinstance(error, FileNotFoundError):
            raise BlobStoreUnavailableError(str(error)) from error
