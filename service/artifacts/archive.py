"""A whole version's files as one tar or zip stream, every file re-hashed on the way out.
I/O: through the blob store.

The archive is written as it is sent: a file's bytes go out in the store's chunks, so
memory stays flat whatever the version's size. Each file is read through
``verified_read``, which holds a file's last piece back until its digest matched: a blob
corrupted in storage raises ``CorruptBlobError`` mid-stream, the response is cut, and the
client sees an error instead of an archive that looks complete.

Both formats come from the standard library, no dependency: tar headers from
``tarfile.TarInfo.tobuf`` (PAX, so long UTF-8 paths and sizes past 8 GiB fit), zip from
``zipfile`` writing to a sink that cannot seek (it then emits data descriptors after each
file and sets zip64 from the size declared up front). stream-zip would do the zip part
too, but buys nothing here: the files are stored, not compressed (model weights barely
compress, and storing keeps the transfer at disk speed), and their sizes are known.

The first member is ``.modelreg/manifest.json``: the model, the version, and every entry
of its manifest with its digest and size, the external ones (whose bytes the registry does
not hold, so they are not in the archive) with their uri. Archives are deterministic (fixed
timestamps and modes): the same version gives the same bytes.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Literal

import msgspec

from events.errors import ConflictError
from events.version_content import ArtifactEntry
from service.artifacts.blobstore import BlobStore, verified_read

ArchiveFormat = Literal["tar", "zip"]
MANIFEST_PATH = ".modelreg/manifest.json"
MEDIA_TYPES: dict[str, str] = {"tar": "application/x-tar", "zip": "application/zip"}
_BLOCK = 512
_TAR_END = b"\0" * (2 * _BLOCK)
# Zip cannot say 1970; a fixed time keeps archives identical from one download to the next.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class ArchiveManifest(msgspec.Struct, frozen=True, kw_only=True):
    """``.modelreg/manifest.json``: what the archive holds and what it leaves out."""

    model: str
    version: int
    files: list[ArtifactEntry]
    external: list[ArtifactEntry]


def manifest_bytes(model: str, version: int, entries: Sequence[ArtifactEntry]) -> bytes:
    """The manifest member; ConflictError (409) when a file of the version has its path."""
    if any(e.path == MANIFEST_PATH for e in entries):
        raise ConflictError(
            f"the version has a file at {MANIFEST_PATH!r}, the path the archive's own"
            " manifest takes; download its files one by one",
            path=MANIFEST_PATH,
        )
    document = ArchiveManifest(
        model=model,
        version=version,
        files=[e for e in entries if not e.external],
        external=[e for e in entries if e.external],
    )
    return msgspec.json.format(msgspec.json.encode(document)) + b"\n"


def _tar_header(path: str, size: int) -> bytes:
    info = tarfile.TarInfo(path)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


def tar_length(manifest: bytes, stored: Sequence[ArtifactEntry]) -> int:
    """The exact byte count of the tar stream, announced as its Content-Length."""
    members = [(MANIFEST_PATH, len(manifest))] + [(e.path, e.size) for e in stored]
    return sum(
        len(_tar_header(path, size)) + size + len(_padding(size)) for path, size in members
    ) + len(_TAR_END)


async def tar_stream(
    store: BlobStore, manifest: bytes, stored: Sequence[ArtifactEntry]
) -> AsyncIterator[bytes]:
    yield _tar_header(MANIFEST_PATH, len(manifest)) + manifest + _padding(len(manifest))
    for entry in stored:
        yield _tar_header(entry.path, entry.size)
        async with aclosing(
            verified_read(store, entry.sha256, entry.size, 0, entry.size)
        ) as chunks:
            async for chunk in chunks:
                yield chunk
        yield _padding(entry.size)
    yield _TAR_END


class _Sink(io.RawIOBase):
    """Where zipfile writes: collects its bytes until taken. It cannot seek, so zipfile
    streams (data descriptors) instead of going back to patch headers."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _zip_info(path: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(path, date_time=_ZIP_TIME)
    info.file_size = size
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


async def zip_stream(
    store: BlobStore, manifest: bytes, stored: Sequence[ArtifactEntry]
) -> AsyncIterator[bytes]:
    sink = _Sink()
    archive = zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED)
    archive.writestr(_zip_info(MANIFEST_PATH, len(manifest)), manifest)
    yield sink.take()
    for entry in stored:
        with archive.open(_zip_info(entry.path, entry.size), "w") as member:
            read = verified_read(store, entry.sha256, entry.size, 0, entry.size)
            async with aclosing(read) as chunks:
                async for chunk in chunks:
                    member.write(chunk)
                    yield sink.take()
        yield sink.take()
    archive.close()
    yield sink.take()


def archive_stream(
    store: BlobStore,
    fmt: ArchiveFormat,
    manifest: bytes,
    entries: Sequence[ArtifactEntry],
) -> AsyncIterator[bytes]:
    stored = [e for e in entries if not e.external]
    if fmt == "zip":
        return zip_stream(store, manifest, stored)
    return tar_stream(store, manifest, stored)
