"""The file store's pipelined upload and download (a batch is hashed and written in
worker threads while the next one arrives; a chunk is hashed while the one before is sent):
the bytes stay in order, and a failure with a write in flight leaves nothing behind."""

from __future__ import annotations

import errno
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from service.artifacts import local
from service.artifacts.blobstore import CHUNK, CorruptBlobError, DigestMismatchError, verified_read
from service.artifacts.local import INCOMING, LocalBlobStore
from tests.support.waiting import eventually

# Several batches and a short last one, each piece distinct, so any reordering shows.
BODY = b"".join(i.to_bytes(4, "big") * 16384 for i in range(56)) + b"tail"
HEX = hashlib.sha256(BODY).hexdigest()


class InterruptedBodyError(Exception):
    pass


async def pieces(body: bytes, cut_at: int | None = None) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 64 * 1024):
        if cut_at is not None and start >= cut_at:
            raise InterruptedBodyError
        yield body[start : start + 64 * 1024]


async def test_a_multi_batch_upload_is_stored_byte_for_byte(tmp_path: Path) -> None:
    # given a store and a body of several batches
    store = LocalBlobStore(tmp_path)
    assert len(BODY) > 3 * CHUNK

    # when it is put in 64 KiB pieces
    put = await store.put(HEX, pieces(BODY), max_bytes=len(BODY))

    # then the blob holds exactly those bytes, and no temporary file is left
    assert (put.size, put.created) == (len(BODY), True)
    assert store.path_of(HEX).read_bytes() == BODY
    assert list((tmp_path / INCOMING).iterdir()) == []


async def test_a_body_cut_while_a_batch_is_being_written_leaves_nothing(tmp_path: Path) -> None:
    # given a body that fails after two batches went to the writer thread
    store = LocalBlobStore(tmp_path)

    # when it is put
    with pytest.raises(InterruptedBodyError):
        await store.put(HEX, pieces(BODY, cut_at=2 * CHUNK + 64 * 1024), max_bytes=len(BODY))

    # then no blob exists and the temporary file is gone
    assert await store.size_of(HEX) is None
    assert list((tmp_path / INCOMING).iterdir()) == []


async def test_a_body_that_hashes_otherwise_is_refused_after_every_batch(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    other = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(DigestMismatchError):
        await store.put(other, pieces(BODY), max_bytes=len(BODY))
    assert await store.size_of(other) is None
    assert list((tmp_path / INCOMING).iterdir()) == []


async def test_pages_released_beside_the_writes_leave_the_bytes_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a store that syncs and releases an upload's pages after every batch (in a
    # thread of its own, while the next batches are written)
    monkeypatch.setattr(local, "RELEASE", CHUNK)
    store = LocalBlobStore(tmp_path)

    # when a body of several batches is put
    put = await store.put(HEX, pieces(BODY), max_bytes=len(BODY))

    # then the blob holds exactly those bytes
    assert (put.size, put.created) == (len(BODY), True)
    assert store.path_of(HEX).read_bytes() == BODY


async def test_a_body_cut_while_pages_are_released_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given releases after every batch, and a body that fails after three batches
    monkeypatch.setattr(local, "RELEASE", CHUNK)
    store = LocalBlobStore(tmp_path)

    # when it is put
    with pytest.raises(InterruptedBodyError):
        await store.put(HEX, pieces(BODY, cut_at=3 * CHUNK + 64 * 1024), max_bytes=len(BODY))

    # then no blob exists and the temporary file is gone
    assert await store.size_of(HEX) is None
    assert list((tmp_path / INCOMING).iterdir()) == []


async def test_a_disk_that_fills_mid_upload_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a store whose disk fills while the third batch is written (pages released
    # after every batch, so a sync may be in flight too)
    monkeypatch.setattr(local, "RELEASE", CHUNK)
    writes = 0
    real_write = local._write_parts

    def filling(handle: Any, parts: list[bytes]) -> None:
        nonlocal writes
        writes += 1
        if writes == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(handle, parts)

    monkeypatch.setattr(local, "_write_parts", filling)
    store = LocalBlobStore(tmp_path)

    # when a body of several batches is put, the disk's error is the put's
    with pytest.raises(OSError, match="No space left"):
        await store.put(HEX, pieces(BODY), max_bytes=len(BODY))

    # then no blob exists and the temporary file is gone
    assert await store.size_of(HEX) is None
    assert list((tmp_path / INCOMING).iterdir()) == []


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, len(BODY)), (CHUNK - 3, 2 * CHUNK + 5), (len(BODY) - 7, len(BODY)), (5, 6)],
    ids=["whole", "across-chunks", "tail", "one-byte"],
)
async def test_a_verified_read_returns_exactly_the_range(
    tmp_path: Path, start: int, end: int
) -> None:
    store = LocalBlobStore(tmp_path)
    await store.put(HEX, pieces(BODY), max_bytes=len(BODY))
    got = b"".join([c async for c in verified_read(store, HEX, len(BODY), start, end)])
    assert got == BODY[start:end]


async def test_a_corrupt_blob_is_cut_before_the_range_s_last_piece(tmp_path: Path) -> None:
    # given a stored blob whose last byte then changed on disk
    store = LocalBlobStore(tmp_path)
    await store.put(HEX, pieces(BODY), max_bytes=len(BODY))
    path = store.path_of(HEX)
    path.chmod(0o644)
    path.write_bytes(BODY[:-1] + b"X")

    # when it is read whole
    received: list[bytes] = []

    async def read_all() -> None:
        async for chunk in verified_read(store, HEX, len(BODY), 0, len(BODY)):
            received.append(chunk)

    with pytest.raises(CorruptBlobError):
        await read_all()

    # then the client got less than the whole blob, never the corrupt last piece
    assert len(b"".join(received)) < len(BODY)
    assert BODY.startswith(b"".join(received))


def open_files(path: Path) -> int:
    """How many of this process's descriptors are open on ``path``."""
    fds = Path("/proc/self/fd")
    found = 0
    for fd in fds.iterdir():
        try:
            found += (fds / fd.name).readlink() == path
        except OSError:
            continue  # closed while listed
    return found


async def test_a_download_cut_short_inside_a_cancelled_scope_lets_go_of_its_file(
    tmp_path: Path,
) -> None:
    # given a blob of several chunks, and a reader that stops after the first one the way
    # Litestar stops a stream when the client leaves: its cancel scope is cancelled, and
    # every await inside it is cancelled again, the generators' cleanup's included
    store = LocalBlobStore(tmp_path)
    await store.put(HEX, pieces(BODY), max_bytes=len(BODY))
    path = store.path_of(HEX)
    received: list[bytes] = []
    chunks = verified_read(store, HEX, len(BODY), 0, len(BODY))
    with anyio.CancelScope() as scope:
        async for chunk in chunks:
            received.append(chunk)
            scope.cancel()

    # then the download stopped after that chunk, and the file is closed (at once, or as
    # soon as the read its thread still ran is done), not left for the collector
    assert len(received) == 1
    await eventually(lambda: open_files(path) == 0, what="the blob's file was closed")
    await chunks.aclose()
