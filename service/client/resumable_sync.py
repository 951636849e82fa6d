"""One big file through a resumable upload session, blocking. GENERATED from
``resumable.py`` by ``python -m service.client._unasync``: do not edit; edit the async
source and regenerate.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import msgspec

from service.client._common import model_path
from service.client._transport import (
    RETRIED_ERRORS,
    SyncTransport,
    decode,
    encode,
    error_of,
    retry_after,
    unreachable,
)
from service.client.errors import ConfigurationError, ModelregError, NotFound
from service.client.manifest import Advance

# Files from this size up go through a session (smaller ones: one PUT, retried whole);
# MODELREG_RESUMABLE_FROM (bytes) moves the line, e.g. lower behind a flaky link.
RESUMABLE_THRESHOLD = 64 * 1024 * 1024
THRESHOLD_VARIABLE = "MODELREG_RESUMABLE_FROM"
# Bytes per PATCH: each answer confirms progress, and a proxy's body limit is not hit.
CHUNK_BYTES = 64 * 1024 * 1024
READ_BYTES = 1024 * 1024
# Answers after which the client asks for the offset and resumes, instead of failing.
RESUMABLE_STATUSES = frozenset({409, 416, 429, 502, 503, 504})
# Looks at a session another request is still writing to, before sending anyway.
SETTLE_POLLS = 10


def resumable_threshold() -> int:
    """The size from which a file is uploaded through a session."""
    text = os.environ.get(THRESHOLD_VARIABLE, "").strip()
    if not text:
        return RESUMABLE_THRESHOLD
    if not text.isdigit():
        raise ConfigurationError(f"{THRESHOLD_VARIABLE}: expected a number of bytes, got {text!r}")
    return int(text)


class _Session(msgspec.Struct, kw_only=True):
    location: str
    offset: int
    busy: bool = False


class _Sent:
    """Bytes confirmed by the server, reported once each to the progress callback."""

    def __init__(self, advance: Advance | None) -> None:
        self.advance = advance
        self.most = 0

    def reached(self, offset: int) -> None:
        if self.advance is not None and offset > self.most:
            self.advance(offset - self.most)
        self.most = max(self.most, offset)


def upload_resumable(
    transport: SyncTransport,
    model: str,
    file: Path,
    sha256: str,
    size: int,
    *,
    advance: Advance | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> bool:
    """Store ``file`` (``size`` bytes hashing to ``sha256``) as a blob of ``model`` through
    an upload session; True when the model did not have it (201), False when it had (200).
    Gives up after ``transport.retry.attempts`` failed chunks in a row."""
    opened = transport.send(
        "POST",
        f"{model_path(model)}/uploads",
        body=encode({"digest": f"sha256:{sha256}", "size": size}),
    )
    session = decode(opened, _Session)
    offset, failures, sent = session.offset, 0, _Sent(advance)
    with file.open("rb") as handle:
        while offset < size:
            end = min(offset + chunk_bytes, size)
            try:
                offset = _append(transport, session.location, handle, offset, end)
            except (*RETRIED_ERRORS, ModelregError) as exc:
                failures += 1
                resumable = not isinstance(exc, ModelregError) or (exc.status in RESUMABLE_STATUSES)
                if not resumable:
                    raise
                if failures >= max(1, transport.retry.attempts):
                    if isinstance(exc, ModelregError):
                        raise
                    raise unreachable("PATCH", session.location, exc, failures) from exc
                transport.sleep(transport.retry.delay(failures, _retry_after(exc)))
                offset = _settled_offset(transport, session.location)
                continue
            failures = 0
            sent.reached(offset)
    try:
        committed = transport.send("PUT", session.location)
    except NotFound:
        # A commit retried after its answer was lost finds the session gone: it worked
        # if the model now holds the blob.
        if not _stored(transport, model, sha256):
            raise
        return True
    return committed.status_code == 201


def _stored(transport: SyncTransport, model: str, sha256: str) -> bool:
    try:
        transport.send("HEAD", f"{model_path(model)}/blobs/sha256:{sha256}")
    except NotFound:
        return False
    return True


def _settled_offset(transport: SyncTransport, location: str) -> int:
    """The server's offset once no request writes to the session any more (the dropped
    one may still be finishing there); after a bounded wait, the offset as it stands."""
    for attempt in range(1, SETTLE_POLLS + 1):
        session = decode(transport.send("GET", location), _Session)
        if not session.busy:
            break
        transport.sleep(transport.retry.delay(attempt))
    return session.offset


def _append(
    transport: SyncTransport, location: str, handle: IO[bytes], start: int, end: int
) -> int:
    """PATCH bytes ``start`` to ``end`` of the file; the offset the server then holds."""

    def chunks() -> Iterator[bytes]:
        transport.blocking(lambda: handle.seek(start))
        left = end - start
        while left > 0:
            want = min(READ_BYTES, left)
            block = transport.blocking(lambda: handle.read(want))  # noqa: B023 - awaited at once
            if not block:
                return
            left -= len(block)
            yield block

    # Not through transport.send: a failed chunk is resumed from the server's offset,
    # never re-sent from the same start by a blind retry.
    response = transport.http.request(
        "PATCH",
        location,
        content=chunks(),
        headers={
            "Content-Range": f"{start}-{end - 1}",
            "Content-Type": "application/octet-stream",
            "Content-Length": str(end - start),
        },
    )
    if response.status_code >= 400:
        raise error_of(response)
    return decode(response, _Session).offset


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    return retry_after(response) if isinstance(response, httpx.Response) else None
