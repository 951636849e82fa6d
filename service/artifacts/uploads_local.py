"""Upload sessions of the file store: ``blobs/incoming/uploads/<id>/`` holds the session
record, the bytes so far (``data``) and the committed offset (``offset``). I/O.

A chunk is appended to ``data``; every ``part_size`` bytes, and when the chunk ends or the
client goes away, ``data`` is fsynced and then ``offset`` is replaced atomically (write,
fsync, rename). The committed offset is the smaller of ``offset`` and the file's length,
and ``data`` is cut back to it before the next append: bytes a killed process wrote past
its last fsynced offset are dropped, never trusted. The commit hashes ``data`` whole (or
takes the hash this process kept while it wrote every byte from 0 in order) and
hard-links it to the blob's name (the same publish as a single PUT), so a blob never
appears unverified, and a killed commit leaves only the session, which can commit again.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import AsyncIterable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from service.artifacts.blobstore import CHUNK, DigestMismatchError, Put
from service.artifacts.local import INCOMING, LocalBlobStore, sync_and_release, sync_directory
from service.artifacts.uploads import (
    SESSION_CODEC,
    SESSION_FILE,
    PresignUnsupportedError,
    Session,
    decode_session,
)

if TYPE_CHECKING:
    from hashlib import _Hash as Hasher

UPLOADS = f"{INCOMING}/uploads"
DATA = "data"
OFFSET = "offset"


class LocalUploads:
    def __init__(self, blobs: LocalBlobStore, part_size: int) -> None:
        self.blobs = blobs
        self.part_size = part_size
        self.root = blobs.root / UPLOADS
        self.root_key = str(self.root)

    def directory(self, session_id: str) -> Path:
        return self.root / session_id

    async def create(self, session: Session) -> None:
        await asyncio.to_thread(self._create, session)

    def _create(self, session: Session) -> None:
        # Built aside and renamed into place: a sweep never sees a half-made session.
        building = self.root / f".{session.id}"
        building.mkdir(parents=True)
        (building / DATA).touch()
        _replace(building / OFFSET, b"0")
        _replace(building / SESSION_FILE, SESSION_CODEC.encode(session))
        building.rename(self.directory(session.id))
        sync_directory(self.root)

    async def load(self, session_id: str) -> Session | None:
        try:
            raw = await asyncio.to_thread((self.directory(session_id) / SESSION_FILE).read_bytes)
        except FileNotFoundError:
            return None
        return decode_session(raw)

    async def offset(self, session: Session) -> int:
        return await asyncio.to_thread(self._offset, self.directory(session.id))

    @staticmethod
    def _offset(directory: Path) -> int:
        recorded = int((directory / OFFSET).read_bytes() or b"0")
        return min(recorded, (directory / DATA).stat().st_size)

    async def append(self, session: Session, chunks: AsyncIterable[bytes]) -> int:
        directory = self.directory(session.id)
        offset = await self.offset(session)
        hasher = _resume_hash(directory, offset)
        handle = await asyncio.to_thread((directory / DATA).open, "r+b")
        try:
            await asyncio.to_thread(_cut_to, handle.fileno(), offset)
            await asyncio.to_thread(handle.seek, offset)
            unsynced = 0
            batch: list[bytes] = []
            pending = 0
            try:
                async for chunk in chunks:
                    batch.append(chunk)
                    pending += len(chunk)
                    if pending >= CHUNK:
                        await asyncio.to_thread(_write, handle, b"".join(batch), hasher)
                        offset, unsynced, batch, pending = (
                            offset + pending,
                            unsynced + pending,
                            [],
                            0,
                        )
                        if unsynced >= self.part_size:
                            await asyncio.to_thread(_commit, handle, directory, offset)
                            unsynced = 0
            finally:
                # The chunk ended, or the client went away: keep every byte that arrived.
                if batch:
                    await asyncio.to_thread(_write, handle, b"".join(batch), hasher)
                    offset += pending
                await asyncio.to_thread(_commit, handle, directory, offset)
                if hasher is not None:
                    _RUNNING[directory] = (offset, hasher)
        finally:
            await asyncio.to_thread(handle.close)
        return offset

    async def publish(self, session: Session) -> Put:
        directory = self.directory(session.id)
        data = directory / DATA
        running = _RUNNING.pop(directory, None)
        if running is not None and running[0] == session.size:
            # This process wrote (and hashed) every byte from 0 in order: no second read.
            actual = running[1].hexdigest()
        else:
            actual = await asyncio.to_thread(_sha256_of, data)
        if actual != session.sha256:
            raise DigestMismatchError(session.sha256, actual)
        created = await asyncio.to_thread(
            self.blobs.link_verified, data, self.blobs.path_of(session.sha256)
        )
        return Put(size=session.size, created=created)

    async def remove(self, session_id: str) -> None:
        _RUNNING.pop(self.directory(session_id), None)
        await asyncio.to_thread(shutil.rmtree, self.directory(session_id), ignore_errors=True)

    async def session_ids(self) -> list[str]:
        def listing() -> list[str]:
            try:
                return sorted(
                    entry.name
                    for entry in self.root.iterdir()
                    if entry.is_dir() and not entry.name.startswith(".")
                )
            except FileNotFoundError:
                return []

        return await asyncio.to_thread(listing)

    async def upload_url(self, session: Session, expires_in: timedelta) -> str:
        raise PresignUnsupportedError("presigned")


# The hash of each session this process appended to from offset 0 without a gap: (bytes
# hashed, hasher). Only a shortcut: after a restart, or when the bytes on disk are not
# the ones hashed here, the commit reads the whole file again.
_RUNNING: dict[Path, tuple[int, Hasher]] = {}


def _resume_hash(directory: Path, offset: int) -> Hasher | None:
    running = _RUNNING.pop(directory, None)
    if running is not None and running[0] == offset:
        return running[1]
    return hashlib.sha256() if offset == 0 else None


def _write(handle: BinaryIO, data: bytes, hasher: Hasher | None) -> None:
    handle.write(data)
    if hasher is not None:
        hasher.update(data)


def _cut_to(fd: int, offset: int) -> None:
    os.ftruncate(fd, offset)


def _commit(handle: BinaryIO, directory: Path, offset: int) -> None:
    """The bytes first, then the offset that vouches for them."""
    handle.flush()
    sync_and_release(handle.fileno())
    _replace(directory / OFFSET, str(offset).encode())


def _replace(path: Path, content: bytes) -> None:
    """Write ``path`` whole or not at all: a reader sees the old content or the new."""
    temporary = path.with_name(path.name + ".new")
    with temporary.open("wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    sync_directory(path.parent)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
