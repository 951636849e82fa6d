"""HTTP single byte ranges (RFC 9110 section 14) for resumable downloads. Pure.

``bytes=a-b``, ``bytes=a-`` and ``bytes=-n`` are honoured; a header that is not one
single range (several ranges, another unit, garbage) is ignored and the whole file is
served, as the RFC allows. A range that starts past the end is unsatisfiable (416).
``If-Range`` with another validator than the current ETag also means the whole file.
"""

from __future__ import annotations

import re

_SINGLE = re.compile(r"bytes=(\d*)-(\d*)")


class UnsatisfiableRangeError(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"the range starts past the end of the file ({size} bytes)")
        self.size = size


def byte_range(
    header: str | None, size: int, *, if_range: str | None, etag: str
) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) to serve, or None for the whole file."""
    if header is None or (if_range is not None and if_range.strip() != etag):
        return None
    match = _SINGLE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # the last n bytes
        length = int(last)
        if length == 0:
            raise UnsatisfiableRangeError(size)
        return max(size - length, 0), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if last != "" and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise UnsatisfiableRangeError(size)
    return start, end
