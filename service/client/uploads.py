"""Uploading a model's files: ask which blobs the model lacks, send only those.

This is the async source; ``uploads_sync.py`` is generated from it by
``python -m service.client._unasync`` (a unit test fails while the two differ).

``upload_blob`` moves ONE file and is the only place that knows how: one streamed
``PUT .../blobs/sha256:<hex>``, retried whole, or, for a big file, a resumable upload
session (``resumable.py``). Each attempt re-reads the file from its start, so a
retry after a 503, a refused connection or a connection dropped mid-body is safe: the
server keeps nothing of a body it did not verify whole, and storing the same bytes again
records nothing (the PUT answers 200).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO

from service.client._common import model_path
from service.client._transport import AsyncTransport
from service.client.errors import NotFound
from service.client.manifest import CHUNK, Advance, LocalFile, progress_bar, show_progress
from service.client.models import FileTransfer
from service.client.resumable import resumable_threshold, upload_resumable

DIGEST_PREFIX = "sha256:"
# Parallel uploads: enough to hide per-request latency with many small files, few enough
# not to thrash one disk or the server.
DEFAULT_PARALLEL = 4


def blob_path(model: str, sha256: str) -> str:
    return f"{model_path(model)}/blobs/{DIGEST_PREFIX}{sha256}"


async def is_stored(transport: AsyncTransport, model: str, sha256: str) -> bool:
    """Whether the model has stored this blob already (HEAD: 200 yes, 404 no)."""
    try:
        await transport.send("HEAD", blob_path(model, sha256))
    except NotFound:
        return False
    return True


class _Sent:
    """Bytes sent of one file, counted once across attempts for the progress bar."""

    def __init__(self, advance: Advance | None) -> None:
        self.advance = advance
        self.most = 0

    def reached(self, offset: int) -> None:
        if self.advance is not None and offset > self.most:
            self.advance(offset - self.most)
        self.most = max(self.most, offset)


async def _chunks(
    transport: AsyncTransport, handle: IO[bytes], sent: _Sent
) -> AsyncIterator[bytes]:
    await transport.blocking(lambda: handle.seek(0))  # each attempt sends the whole file
    offset = 0
    while block := await transport.blocking(lambda: handle.read(CHUNK)):
        offset += len(block)
        sent.reached(offset)
        yield block


async def upload_blob(
    transport: AsyncTransport,
    model: str,
    file: Path,
    sha256: str,
    size: int,
    *,
    advance: Advance | None = None,
) -> bool:
    """Store ``file`` as blob ``sha256`` of ``model``; True when the model did not have
    it (201), False when it had (200). A body that no longer hashes to ``sha256`` (the file
    changed since it was hashed) is refused: ``ValidationFailed``, rule digest_mismatch.
    From ``resumable_threshold()`` bytes up the file goes through a resumable upload
    session: a dropped connection costs only what the server had not kept."""
    if size >= resumable_threshold():
        return await upload_resumable(transport, model, file, sha256, size, advance=advance)
    sent = _Sent(advance)
    with file.open("rb") as handle:
        response = await transport.send(
            "PUT",
            blob_path(model, sha256),
            content=lambda: _chunks(transport, handle, sent),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
    return response.status_code == 201


async def upload_files(
    transport: AsyncTransport,
    model: str,
    files: Sequence[LocalFile],
    *,
    parallel: int = DEFAULT_PARALLEL,
    progress: bool | None = None,
) -> list[FileTransfer]:
    """Upload every file the model has not stored yet, ``parallel`` at a time; what
    happened to each, in the order given."""

    async def lacking(found: LocalFile) -> bool:
        return not await is_stored(transport, model, found.sha256)

    distinct = list({found.sha256: found for found in files}.values())  # same bytes: once
    missing = await transport.each(distinct, lacking, parallel)
    todo = [found for found, wanted in zip(distinct, missing, strict=True) if wanted]
    total = sum(found.size for found in todo)
    with progress_bar(show_progress(progress, total), total, "uploading") as (describe, advance):

        async def send(found: LocalFile) -> bool:
            describe(found.path)
            return await upload_blob(
                transport, model, found.file, found.sha256, found.size, advance=advance
            )

        await transport.each(todo, send, parallel)
    sent = {found.sha256 for found in todo}
    return [
        FileTransfer(
            path=found.path,
            sha256=found.sha256,
            size=found.size,
            action="uploaded" if found.sha256 in sent else "stored",
        )
        for found in files
    ]
