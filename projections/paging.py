"""Pages, cursors and the refusals every paged query shares. Pure (no I/O).

A cursor carries the sort key of the last row a page showed, and the order it belongs to,
so the next page starts after that row (keyset pagination) and a cursor cannot be replayed
against another order.

The queries make and read plain cursors; what the API hands out is sealed by
``CursorSeal``: the plain cursor with an HMAC-SHA256 tag under a server key. A client can
only send back a cursor the service issued (any change is refused with
``InvalidCursorError``), so it cannot forge a sort key to probe rows it may not see; and as
the queries filter by scope before the limit, the cursor of a page is that of a row the
caller was shown.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any, Generic, TypeVar

import msgspec

from projections.base import Names

T = TypeVar("T")

MAX_CURSOR_LENGTH = 4096


class InvalidQueryError(ValueError):
    """A filter, order or limit the caller can fix (HTTP 400)."""


class InvalidCursorError(InvalidQueryError):
    """A cursor that is damaged or belongs to another order (HTTP 400)."""


class Page(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """One page of results; ``next_cursor`` asks for the next one (None: this is the last)."""

    items: tuple[T, ...]
    next_cursor: str | None = None


def merge_names(*names: Names) -> Names:
    """One ``Names`` holding the tables of several projections (live, generation or temp)."""
    merged: dict[str, str] = {}
    for n in names:
        merged.update(n)
    return Names(merged)


def encode_cursor(order: str, key: tuple[Any, ...]) -> str:
    return base64.urlsafe_b64encode(msgspec.msgpack.encode((order, key))).rstrip(b"=").decode()


def decode_cursor(cursor: str, order: str, key_type: Any) -> tuple[Any, ...]:
    """The sort key in ``cursor``, checked to be of ``order`` and of ``key_type``."""
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise InvalidCursorError("cursor too long")
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        found, key = msgspec.msgpack.decode(raw, type=tuple[str, msgspec.Raw])
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise InvalidCursorError(f"not a cursor this service issued ({exc})") from None
    if found != order:
        raise InvalidCursorError(f"this cursor pages through order {found!r}, not {order!r}")
    try:
        value: tuple[Any, ...] = msgspec.msgpack.decode(key, type=key_type)
    except msgspec.DecodeError as exc:
        raise InvalidCursorError(f"not a cursor this service issued ({exc})") from None
    return value


class CursorSeal:
    """Seals plain cursors for clients and opens the sealed ones they send back."""

    TAG = 16  # bytes of HMAC-SHA256 kept: 128 bits, far beyond guessing

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._key, b"cursor:" + body, hashlib.sha256).digest()[: self.TAG]

    def seal(self, cursor: str | None) -> str | None:
        if cursor is None:
            return None
        body = cursor.encode()
        return base64.urlsafe_b64encode(self._tag(body) + body).rstrip(b"=").decode()

    def open(self, sealed: str | None) -> str | None:
        """The plain cursor inside ``sealed``; InvalidCursorError unless this service (this
        key) sealed it, unchanged."""
        if not sealed:
            return None
        if len(sealed) > MAX_CURSOR_LENGTH:
            raise InvalidCursorError("cursor too long")
        try:
            raw = base64.b64decode(sealed + "=" * (-len(sealed) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise InvalidCursorError("not a cursor this service issued") from None
        tag, body = raw[: self.TAG], raw[self.TAG :]
        if len(tag) < self.TAG or not hmac.compare_digest(tag, self._tag(body)):
            raise InvalidCursorError("not a cursor this service issued (damaged or changed)")
        return body.decode("ascii")
