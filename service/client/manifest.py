"""An artifact manifest from local files: relative paths, sizes and sha256 digests.

Files are read in chunks (memory stays flat for multi-gigabyte weights) and, when there
is a lot to read and stderr is a terminal, a progress bar shows bytes, speed and the file
being hashed. The sizes are the bytes actually hashed, so a file growing while it is read
yields a consistent entry, never a digest of one length paired with another.

    build_manifest("out/")                            # uri = file:///abs/path/out/<path>
    build_manifest("out/", uri="s3://models/churn/7") # uri = s3://models/churn/7/<path>

``build_manifest`` marks every entry ``external``: its bytes stay where the uri says, not
in the registry. ``hash_files`` is the same walk for files the client uploads
(``service.client.uploads``): their entries name blobs the registry stores.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from events.version_content import MAX_ARTIFACTS, ArtifactEntry

CHUNK = 1024 * 1024
# Show a progress bar (when stderr is a terminal) once this many bytes are to be hashed.
PROGRESS_THRESHOLD = 64 * 1024 * 1024
# Never part of a model package.
DEFAULT_EXCLUDE: tuple[str, ...] = (".git", ".hg", ".svn", "__pycache__", ".DS_Store")

Advance = Callable[[int], None]


class ManifestError(ValueError):
    """The directory cannot be described as a manifest (missing, empty, too many files)."""


def sha256_file(
    path: str | os.PathLike[str], advance: Advance | None = None, chunk_size: int = CHUNK
) -> tuple[str, int]:
    """The hex sha256 and byte count of a file, read in chunks; ``advance(n)`` after each."""
    digest = hashlib.sha256()
    size = 0
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
            size += len(block)
            if advance is not None:
                advance(len(block))
    return digest.hexdigest(), size


def list_files(
    root: str | os.PathLike[str], exclude: Sequence[str] = DEFAULT_EXCLUDE
) -> list[tuple[str, Path]]:
    """``(relative POSIX path, file)`` under ``root``, sorted by path.

    ``exclude`` holds glob patterns matched against each path component and against the
    whole relative path (``"*.tmp"``, ``"logs/*"``). Directory symlinks are not followed
    (no cycles); file symlinks are, so the manifest describes the bytes a reader gets.
    """
    base = Path(root)
    if base.is_file():
        return [(base.name, base)]
    if not base.is_dir():
        raise ManifestError(f"{root}: no such file or directory")

    def excluded(relative: str) -> bool:
        return any(
            fnmatch.fnmatchcase(relative, pattern)
            or any(fnmatch.fnmatchcase(part, pattern) for part in relative.split("/"))
            for pattern in exclude
        )

    found: list[tuple[str, Path]] = []
    for directory, subdirs, files in os.walk(base, followlinks=False):
        here = Path(directory)
        prefix = here.relative_to(base).as_posix()
        subdirs[:] = sorted(
            d for d in subdirs if not excluded(d if prefix == "." else f"{prefix}/{d}")
        )
        for name in files:
            relative = name if prefix == "." else f"{prefix}/{name}"
            if not excluded(relative):
                found.append((relative, here / name))
    found.sort(key=lambda item: item[0])
    return found


def artifact_uri(relative: str, file: Path, uri: str | None) -> str:
    """Where a file's bytes are: ``uri`` + its path, or its absolute ``file://`` URI."""
    if uri is None:
        return file.resolve().as_uri()
    return uri.rstrip("/") + "/" + quote(relative)


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A file to upload: its path in the manifest, where it is here, its digest and size."""

    path: str
    file: Path
    sha256: str
    size: int

    def entry(self) -> ArtifactEntry:
        """The manifest entry naming the blob the registry stores for it."""
        return ArtifactEntry(path=self.path, sha256=self.sha256, size=self.size)


def show_progress(progress: bool | None, total: int) -> bool:
    """``progress``: True always, False never, None when stderr is a terminal and at least
    ``PROGRESS_THRESHOLD`` bytes are to be moved."""
    if progress is not None:
        return progress
    return total >= PROGRESS_THRESHOLD and sys.stderr.isatty()


def hash_files(
    root: str | os.PathLike[str],
    *,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    progress: bool | None = None,
    chunk_size: int = CHUNK,
) -> list[LocalFile]:
    """Every file under ``root`` (or the single file ``root``), hashed, sorted by path."""
    files = list_files(root, exclude)
    if not files:
        raise ManifestError(f"{root}: no files to register")
    if len(files) > MAX_ARTIFACTS:
        raise ManifestError(
            f"{root}: {len(files)} files; a version holds at most {MAX_ARTIFACTS} artifacts"
        )
    total = sum(file.stat().st_size for _, file in files)
    found: list[LocalFile] = []
    with progress_bar(show_progress(progress, total), total, "hashing") as (describe, advance):
        for relative, file in files:
            describe(relative)
            digest, size = sha256_file(file, advance, chunk_size)
            found.append(LocalFile(relative, file, digest, size))
    return found


def build_manifest(
    root: str | os.PathLike[str],
    *,
    uri: str | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    progress: bool | None = None,
    chunk_size: int = CHUNK,
) -> tuple[ArtifactEntry, ...]:
    """Describe every file under ``root`` (or the single file ``root``) as external.

    ``uri`` is where the files are (or will be) uploaded, e.g. ``s3://models/churn/7``;
    each entry's URI is it joined with the entry's path. Without it, entries point at the
    local files (``file:///...``). ``progress``: True always, False never, None when
    stderr is a terminal and at least ``PROGRESS_THRESHOLD`` bytes are to be read.
    """
    return tuple(
        ArtifactEntry(
            path=found.path,
            uri=artifact_uri(found.path, found.file, uri),
            sha256=found.sha256,
            size=found.size,
            external=True,  # the registry holds no copy: the entry says where it is
        )
        for found in hash_files(root, exclude=exclude, progress=progress, chunk_size=chunk_size)
    )


@contextmanager
def progress_bar(
    show: bool, total: int, verb: str
) -> Iterator[tuple[Callable[[str], None], Advance | None]]:
    """``(describe(name), advance(n))`` of a bar on stderr saying ``verb`` (or no-ops); the
    bar is thread-safe, so parallel transfers may advance it."""
    if not show:
        yield (lambda _name: None), None
        return
    # Imported only when drawn: a training script that never shows a bar never loads rich.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn(verb + " [bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("", total=total)
    with bar:
        yield (lambda name: bar.update(task, description=name)), (lambda n: bar.advance(task, n))
