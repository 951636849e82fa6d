"""Generate ``_sync_client.py`` from ``_async_client.py`` (as httpcore does with unasync).

python -m service.client._unasync          # rewrite _sync_client.py
python -m service.client._unasync --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "_async_client.py"
TARGET = HERE / "_sync_client.py"

HEADER = '''"""``Client``: the whole v1 API, blocking. GENERATED from ``_async_client.py`` by
``python -m service.client._unasync``: do not edit; edit the async source and regenerate.
"""
'''

# (async source, generated sync twin, the twin's docstring)
PAIRS: list[tuple[Path, Path, str]] = [
    (SOURCE, TARGET, HEADER),
    (
        HERE / "uploads.py",
        HERE / "uploads_sync.py",
        '''"""Uploading a model's files, blocking. GENERATED from ``uploads.py`` by
``python -m service.client._unasync``: do not edit; edit the async source and regenerate.
"""
''',
    ),
    (
        HERE / "resumable.py",
        HERE / "resumable_sync.py",
        '''"""One big file through a resumable upload session, blocking. GENERATED from
``resumable.py`` by ``python -m service.client._unasync``: do not edit; edit the async
source and regenerate.
"""
''',
    ),
    (
        HERE / "downloads.py",
        HERE / "downloads_sync.py",
        '''"""Downloading a version's files, blocking. GENERATED from ``downloads.py`` by
``python -m service.client._unasync``: do not edit; edit the async source and regenerate.
"""
''',
    ),
]

# Whole words only, applied in order.
SUBSTITUTIONS: list[tuple[str, str]] = [
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\bAsyncIterator, Iterable\b", "Iterable, Iterator"),  # keep the imports sorted
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bAsyncClient\b", "Client"),
    (r"\bAsyncTransport\b", "SyncTransport"),
    (r"\bhttpx\.AsyncBaseTransport\b", "httpx.BaseTransport"),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\b_FLUSH_AT_EXIT = False\b", "_FLUSH_AT_EXIT = True"),
    (r"\bservice\.client\.uploads\b", "service.client.uploads_sync"),
    (r"\bservice\.client\.resumable\b", "service.client.resumable_sync"),
    (r"\bservice\.client\.downloads\b", "service.client.downloads_sync"),
    (r"\.aiter_bytes\(", ".iter_bytes("),
    (r"\.aread\(", ".read("),
    (r"\bAbstractAsyncContextManager\b", "AbstractContextManager"),
    (r"\bAsyncIterator\[bytes\]", "Iterator[bytes]"),
]


# ``for x in xs: yield x`` is all an async generator can do; a sync one says ``yield from``.
_YIELD_EACH = re.compile(r"(?m)^(\s*)for (\w+) in ([\w.]+):\n\s+yield \2\n")
_IMPORT_BLOCK = re.compile(r"(?m)^(from [\w.]+ import \(\n)((?:    \w+,\n)+)(\))")


def _isort_key(name: str) -> tuple[int, str]:
    """Ruff's isort order inside one import: CONSTANTS, then Classes, then functions."""
    kind = 0 if name.isupper() and len(name) > 1 else 1 if name[:1].isupper() else 2
    return kind, name


def _sort_names(match: re.Match[str]) -> str:
    names = [line.strip().rstrip(",") for line in match.group(2).splitlines()]
    lines = "".join(f"    {name},\n" for name in sorted(names, key=_isort_key))
    return match.group(1) + lines + match.group(3)


def generate(source: str, header: str = HEADER) -> str:
    body = source.split('"""', 2)[2].lstrip("\n")  # drop the module docstring
    for pattern, replacement in SUBSTITUTIONS:
        body = re.sub(pattern, replacement, body)
    body = _YIELD_EACH.sub(r"\1yield from \3\n", body)
    body = _IMPORT_BLOCK.sub(_sort_names, body)
    return header + "\n" + body


def main(argv: list[str]) -> int:
    stale = []
    for source, target, header in PAIRS:
        generated = generate(source.read_text(), header)
        if "--check" in argv:
            if not target.exists() or target.read_text() != generated:
                stale.append(target.name)
            continue
        target.write_text(generated)
    if stale:
        sys.stderr.write(f"{', '.join(stale)} out of date: run python -m service.client._unasync\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
