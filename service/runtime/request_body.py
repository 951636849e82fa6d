"""A request body handed to the app as the parser produced it, without uvicorn's copies.

uvicorn's httptools protocol appends every body chunk to a ``bytearray`` and hands the
app ``bytes(bytearray)``: two copies of every byte on the event loop, on top of the
parser's own. On a 100 MiB upload these copies were the loop's largest cost after the
socket reads (py-spy: ``on_body`` 11% of the API process's busy samples), and the loop is
what bounds an upload (the hashing and writing run in worker threads beside it).

Here the cycle keeps the chunks as the parser gave them and joins them only when more
than one waits; a receive that finds one chunk hands that very object on. Flow control is
unchanged: uvicorn still pauses reading once more than its high-water mark is buffered.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle


class BodyChunks:
    """What uvicorn's code sees as ``cycle.body``: ``+=``, ``len`` and ``bytes()``."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def __iadd__(self, data: bytes) -> BodyChunks:
        if data:
            self.parts.append(data)
            self.size += len(data)
        return self

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        if len(self.parts) == 1 and type(self.parts[0]) is bytes:
            return self.parts[0]
        return b"".join(self.parts)


class ChunkedBodyCycle(RequestResponseCycle):
    """uvicorn's request cycle whose ``body`` is a ``BodyChunks``: its ``receive`` resets
    the body by assigning an empty ``bytearray``, which starts a new ``BodyChunks``."""

    @property  # type: ignore[override]  # uvicorn declares a bytearray attribute
    def body(self) -> BodyChunks:
        return self._chunks

    @body.setter
    def body(self, value: Any) -> None:
        chunks = BodyChunks()
        chunks += bytes(value)
        self._chunks = chunks


def adopt(cycle: RequestResponseCycle) -> None:
    """Make a cycle uvicorn has just created (no body received yet) keep its body as
    chunks. Its ASGI task is created but has not run, so nothing has read ``body``."""
    pending = bytes(cycle.body)
    cycle.__class__ = ChunkedBodyCycle
    cycle.body = pending  # type: ignore[assignment]  # the setter takes any bytes-like
