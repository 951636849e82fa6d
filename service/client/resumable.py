"""One big file through a resumable upload session (docs/artifacts.md, "Resumable
uploads"): a dropped connection, a restarted server or a 503 costs only the bytes the
server had not committed, never the whole file.

The session is opened for the file's digest and size; chunks of ``chunk_bytes`` go with
``Content-Range`` at the offset the server last reported. When a chunk fails (no answer,
503, 409 while the server still finishes the dropped request, 416 because it kept more or
less than the client thought), the client asks the server for its offset and sends from
there (after waiting for the server to finish with the dropped request, which the session
reports as ``busy``), so no byte is sent twice on purpose and none is skipped. The commit verifies the
whole blob on the server. I/O: the network and the file.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import httpx
import msgspec

from service.client._common import model_path
from service.client._transport import (
    RETRIED_ERRORS,
    AsyncTransport,
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


async def upload_resumable(
    transport: AsyncTransport,
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
    opened = await transport.send(
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
                offset = await _append(transport, session.location, handle, offset, end)
            except (*RETRIED_ERRORS, ModelregError) as exc:
                failures += 1
                resumable = not isinstance(exc, ModelregError) or (exc.status in RESUMABLE_STATUSES)
                if not resumable:
                    raise
                if failures >= max(1, transport.retry.attempts):
                    if isinstance(exc, ModelregError):
                        raise
                    raise unreachable("PATCH", session.location, exc, failures) from exc
                await transport.sleep(transport.retry.delay(failures, _retry_after(exc)))
                offset = await _settled_offset(transport, session.location)
                continue
            failures = 0
            sent.reached(offset)
    try:
        committed = await transport.send("PUT", session.location)
    except NotFound:
        # A commit retried after its answer was lost finds the session gone: it worked
        # if the model now holds the blob.
        if not await _stored(transport, model, sha256):
            raise
        return True
    return committed.status_code == 201


async def _stored(transport: AsyncTransport, model: str, sha256: str) -> bool:
    try:
        await transport.send("HEAD", f"{model_path(model)}/blobs/sha256:{sha256}")
    except NotFound:
        return False
    return True


async def _settled_offset(transport: AsyncTransport, location: str) -> int:
    """The server's offset once no request writes to the session any more (the dropped
    one may still be finishing there); after a bounded wait, the offset as it stands."""
    for attempt in range(1, SETTLE_POLLS + 1):
        session = decode(await transport.send("GET", location), _Session)
        if not session.busy:
            break
        await transport.sleep(transport.retry.delay(attempt))
    return session.offset


async def _append(
    transport: AsyncTransport, location: str, handle: IO[bytes], start: int, end: int
) -> int:
    """PATCH bytes ``start`` to ``end`` of the file; the offset the server then holds."""

    async def chunks() -> AsyncIterator[bytes]:
        await transport.blocking(lambda: handle.seek(start))
        left = end - start
        while left > 0:
            want = min(READ_BYTES, left)
            block = await transport.blocking(lambda: handle.read(want))  # noqa: B023 - awaited at once
            if not block:
                return
            left -= len(block)
            yield block

    # Not through transport.send: a failed chunk is resumed from the server's offset,
    # never re-sent from the same start by a blind retry.
    response = await transport.http.request(
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
