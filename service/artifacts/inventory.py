"""What a blob store holds, and deleting from it: for the audit and the garbage collector
only (uploads and downloads never list or delete). I/O: the file system or S3.

``blobs()`` lists every stored blob with its size and when it was written; ``incoming()``
lists the file store's upload leftovers (``blobs/incoming/``: only a killed process leaves
one); ``delete`` removes one of either. S3 keeps no leftovers under the blob keys (an
unfinished multipart upload is not an object): a bucket lifecycle rule that aborts
incomplete multipart uploads sweeps those (docs/artifacts.md).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import obstore
from obstore.exceptions import BaseError

from service.artifacts.blobstore import BlobStore, BlobStoreUnavailableError
from service.artifacts.local import INCOMING, LocalBlobStore
from service.artifacts.s3 import S3BlobStore

BLOBS_PREFIX = "blobs/sha256"
_NAME = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Held:
    """One object in the store: a blob (``sha256`` set) or an upload leftover (``None``)."""

    key: str
    sha256: str | None
    size: int
    written_at: datetime


class Inventory(Protocol):
    def blobs(self) -> AsyncIterator[Held]: ...

    def incoming(self) -> AsyncIterator[Held]: ...

    async def delete(self, held: Held) -> bool:
        """Remove it; False when it was gone already."""
        ...


def inventory_of(store: BlobStore) -> Inventory:
    if isinstance(store, LocalBlobStore):
        return LocalInventory(store.root)
    if isinstance(store, S3BlobStore):
        return S3Inventory(store)
    raise TypeError(f"no inventory for {type(store).__name__}")


def _sha256_of(key: str) -> str | None:
    """The digest a blob key names (``blobs/sha256/ab/ab…``), or None for anything else."""
    parts = key.split("/")
    if len(parts) != 4 or "/".join(parts[:2]) != BLOBS_PREFIX:
        return None
    name = parts[3]
    return name if _NAME.fullmatch(name) and parts[2] == name[:2] else None


class LocalInventory:
    def __init__(self, root: Path) -> None:
        self.root = root

    async def blobs(self) -> AsyncIterator[Held]:
        for held in await asyncio.to_thread(self._walk, self.root / BLOBS_PREFIX):
            if held.sha256 is not None:
                yield held

    async def incoming(self) -> AsyncIterator[Held]:
        for held in await asyncio.to_thread(self._walk, self.root / INCOMING):
            yield held

    async def delete(self, held: Held) -> bool:
        try:
            await asyncio.to_thread((self.root / held.key).unlink)
        except FileNotFoundError:
            return False
        return True

    def _walk(self, top: Path) -> list[Held]:
        found: list[Held] = []
        for directory, _, files in os.walk(top):
            for name in files:
                path = Path(directory) / name
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue  # deleted while listed
                key = path.relative_to(self.root).as_posix()
                written = datetime.fromtimestamp(stat.st_mtime, UTC)
                found.append(Held(key, _sha256_of(key), stat.st_size, written))
        return found


class S3Inventory:
    def __init__(self, store: S3BlobStore) -> None:
        self._store = store.object_store

    async def blobs(self) -> AsyncIterator[Held]:
        try:
            async for batch in obstore.list(self._store, prefix=BLOBS_PREFIX):
                for meta in batch:
                    key = meta["path"]
                    sha256 = _sha256_of(key)
                    if sha256 is not None:
                        yield Held(key, sha256, meta["size"], meta["last_modified"])
        except BaseError as exc:
            raise BlobStoreUnavailableError(str(exc)) from exc

    async def incoming(self) -> AsyncIterator[Held]:
        return
        yield  # pragma: no cover - an async generator with nothing to list

    async def delete(self, held: Held) -> bool:
        try:
            await obstore.delete_async(self._store, held.key)
        except FileNotFoundError:
            return False
        except BaseError as exc:
            raise BlobStoreUnavailableError(str(exc)) from exc
        return True
