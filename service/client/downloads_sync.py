"""Downloading a version's files, blocking. GENERATED from ``downloads.py`` by
``python -m service.client._unasync``: do not edit; edit the async source and regenerate.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import quote

from service.client._common import version_path
from service.client._transport import RETRIED_ERRORS, SyncTransport, error_of
from service.client.errors import CorruptDownload, Unreachable, UnsafePath
from service.client.manifest import Advance, sha256_file
from service.client.models import ArtifactEntry, FileTransfer

PARTIAL_SUFFIX = ".modelreg-partial"
DEFAULT_PARALLEL = 4


def target_of(dest: Path, path: str) -> Path:
    """Where ``path`` of a manifest lands under ``dest``; UnsafePath if outside it."""
    parts = path.split("/")
    if (
        "\\" in path
        or "\0" in path
        or PurePosixPath(path).is_absolute()
        or any(part in ("", "..", ".") for part in parts)
    ):
        raise UnsafePath(f"refusing to write {path!r}: it is not a relative path inside")
    root = dest.resolve()
    target = root.joinpath(*parts)
    # A symlink planted in the destination must not carry a write elsewhere.
    if not target.parent.resolve().is_relative_to(root) or (
        target.is_symlink() and not target.resolve().is_relative_to(root)
    ):
        raise UnsafePath(f"refusing to write {path!r}: it leads outside {root}")
    return target


def file_url(model: str, version: int, path: str) -> str:
    return f"{version_path(model, version)}/files/" + "/".join(
        quote(part, safe="") for part in path.split("/")
    )


def _already_there(target: Path, entry: ArtifactEntry) -> bool:
    if not target.is_file() or target.stat().st_size != entry.size:
        return False
    return sha256_file(target)[0] == entry.sha256


class _Partial:
    """The ``.modelreg-partial`` file of one download: how far it got, and the hash so far."""

    def __init__(self, target: Path, entry: ArtifactEntry) -> None:
        self.path = target.with_name(target.name + PARTIAL_SUFFIX)
        self.entry = entry
        self.offset = 0
        self.digest = hashlib.sha256()

    def resume(self) -> None:
        """Re-hash what an earlier attempt left, or start afresh if it cannot be a prefix."""
        if not self.path.is_file() or self.path.stat().st_size > self.entry.size:
            self.path.unlink(missing_ok=True)
            self.path.touch()  # an empty file is complete at once: nothing to fetch
            return
        with self.path.open("rb") as handle:
            while block := handle.read(1024 * 1024):
                self.digest.update(block)
                self.offset += len(block)

    def restart(self) -> None:
        self.offset, self.digest = 0, hashlib.sha256()

    @property
    def complete(self) -> bool:
        return self.offset == self.entry.size

    def finish(self, target: Path) -> None:
        """Rename into place if the bytes are the manifest's; else delete them and raise."""
        entry, size = self.entry, self.path.stat().st_size
        if size != entry.size or self.digest.hexdigest() != entry.sha256:
            self.path.unlink(missing_ok=True)
            raise CorruptDownload(
                f"{entry.path}: received {size} bytes hashing to sha256:"
                f"{self.digest.hexdigest()}, expected {entry.size} bytes, sha256:"
                f"{entry.sha256}; nothing was kept",
                status=None,
            )
        with self.path.open("rb+") as handle:
            os.fsync(handle.fileno())
        self.path.replace(target)


def _fetch_rest(
    transport: SyncTransport, url: str, part: _Partial, advance: Advance | None, last: bool
) -> bool:
    """One GET of the bytes still missing into the partial file; False when the server
    was busy (retry later). A connection lost mid-body raises, keeping what arrived."""
    etag = f'"sha256:{part.entry.sha256}"'
    headers = {"Range": f"bytes={part.offset}-", "If-Range": etag} if part.offset else {}
    with transport.stream("GET", url, headers) as response:
        if response.status_code in transport.retry.statuses and not last:
            return False
        if response.status_code >= 400:
            response.read()
            raise error_of(response)
        if response.status_code != 206:  # the whole file came: start over
            part.restart()
        with part.path.open("r+b" if part.offset else "wb") as handle:
            handle.seek(part.offset)
            handle.truncate()
            # Written in the loop, not a thread: a page-cache write of a network chunk is
            # far quicker than the chunk's arrival.
            for chunk in response.iter_bytes():
                handle.write(chunk)
                part.digest.update(chunk)
                part.offset += len(chunk)
                if advance is not None:
                    advance(len(chunk))
    return True


def download_file(
    transport: SyncTransport,
    model: str,
    version: int,
    entry: ArtifactEntry,
    dest: Path,
    *,
    advance: Advance | None = None,
) -> FileTransfer:
    """Fetch one stored file of a version into ``dest`` (verified, atomic, resumed)."""
    target = target_of(dest, entry.path)

    def done(action: Literal["downloaded", "present"]) -> FileTransfer:
        return FileTransfer(path=entry.path, sha256=entry.sha256, size=entry.size, action=action)

    if transport.blocking(lambda: _already_there(target, entry)):
        if advance is not None:
            advance(entry.size)
        return done("present")
    transport.blocking(lambda: target.parent.mkdir(parents=True, exist_ok=True))
    part = _Partial(target, entry)
    transport.blocking(part.resume)
    if advance is not None and part.offset:
        advance(part.offset)
    url = file_url(model, version, entry.path)
    attempts = max(1, transport.retry.attempts)
    attempt = 0
    while not part.complete and attempt < attempts:
        attempt += 1
        try:
            if _fetch_rest(transport, url, part, advance, attempt == attempts):
                continue
            why = "busy"
        except RETRIED_ERRORS as exc:
            if attempt == attempts:
                raise Unreachable(
                    f"{entry.path}: the download broke off at byte {part.offset} of"
                    f" {entry.size} {attempts} times ({type(exc).__name__}): a network fault,"
                    " or a file the registry found corrupt in its store; the partial file"
                    " is kept",
                    method="GET",
                    url=url,
                ) from exc
            why = type(exc).__name__
        transport.sleep(transport.wait("GET", url, attempt, why, None))
    transport.blocking(lambda: part.finish(target))
    return done("downloaded")
