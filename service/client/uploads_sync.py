"""Uploading a model's files, blocking. GENERATED from ``uploads.py`` by
``python -m service.client._unasync``: do not edit; edit the async source and regenerate.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from service.client._common import model_path
from service.client._transport import SyncTransport
from service.client.errors import NotFound
from service.client.manifest import CHUNK, Advance, LocalFile, progress_bar, show_progress
from service.client.models import FileTransfer
from service.client.resumable_sync import resumable_threshold, upload_resumable

DIGEST_PREFIX = "sha256:"
# Parallel uploads: enough to hide per-request latency with many small files, few enough
# not to thrash one disk or the server.
DEFAULT_PARALLEL = 4


def blob_path(model: str, sha256: str) -> str:
    return f"{model_path(model)}/blobs/{DIGEST_PREFIX}{sha256}"


def is_stored(transport: SyncTransport, model: str, sha256: str) -> bool:
    """Whether the model has stored this blob already (HEAD: 200 yes, 404 no)."""
    try:
        transport.send("HEAD", blob_path(model, sha256))
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


def _chunks(
    transport: SyncTransport, handle: IO[bytes], sent: _Sent
) -> Iterator[bytes]:
    transport.blocking(lambda: handle.seek(0))  # each attempt sends the whole file
    offset = 0
    while block := transport.blocking(lambda: handle.read(CHUNK)):
        offset += len(block)
        sent.reached(offset)
        yield block


def upload_blob(
    transport: SyncTransport,
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
        return upload_resumable(transport, model, file, sha256, size, advance=advance)
    sent = _Sent(advance)
    with file.open("rb") as handle:
        response = transport.send(
            "PUT",
            blob_path(model, sha256),
            content=lambda: _chunks(transport, handle, sent),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
    return response.status_code == 201


def upload_files(
    transport: SyncTransport,
    model: str,
    files: Sequence[LocalFile],
    *,
    parallel: int = DEFAULT_PARALLEL,
    progress: bool | None = None,
) -> list[FileTransfer]:
    """Upload every file the model has not stored yet, ``parallel`` at a time; what
    happened to each, in the order given."""

    def lacking(found: LocalFile) -> bool:
        return not is_stored(transport, model, found.sha256)

    distinct = list({found.sha256: found for found in files}.values())  # same bytes: once
    missing = transport.each(distinct, lacking, parallel)
    todo = [found for found, wanted in zip(distinct, missing, strict=True) if wanted]
    total = sum(found.size for found in todo)
    with progress_bar(show_progress(progress, total), total, "uploading") as (describe, advance):

        def send(found: LocalFile) -> bool:
            describe(found.path)
            return upload_blob(
                transport, model, found.file, found.sha256, found.size, advance=advance
            )

        transport.each(todo, send, parallel)
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
