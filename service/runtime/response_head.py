"""A response's head and its first body bytes in one write to the socket.

uvicorn's httptools cycle writes the status line and headers when the app sends
``http.response.start``, then the body when it sends ``http.response.body``: two writes,
so two ``send`` system calls per answer on a connection whose buffer is empty. On a small
JSON answer the second one costs as much as the first, and on this loopback each wakes
the client again (py-spy: uvicorn's ``send`` was a fifth of an authenticated read's
samples). Here the head is held until the first body message and goes out with it in one
``writelines``, which uvloop and asyncio both turn into one vectored write.

What the client receives is byte for byte the same, also when no body bytes follow (a
HEAD answer; an app that fails after starting its answer, whose connection uvicorn
closes): the head then goes out on its own, as uvicorn would have sent it.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle


class _HeadHolder:
    """Stands in for the transport while uvicorn writes a response's head."""

    __slots__ = ("head",)

    def __init__(self) -> None:
        self.head: bytes = b""

    def write(self, data: bytes) -> None:
        self.head += data


class _HeadFirst:
    """Stands in for the transport from a response's head until its first write: that
    write, a close, or the end of an answer without body bytes (HEAD, an app that failed
    after starting) sends the head first; then the cycle has its transport back."""

    __slots__ = ("cycle", "head", "sent", "transport")

    def __init__(self, cycle: RequestResponseCycle, transport: Any, head: bytes) -> None:
        self.cycle = cycle
        self.transport = transport
        self.head = head
        self.sent = False

    def write(self, data: bytes) -> None:
        self._hand_back()
        self.transport.writelines([self.head, data] if data else [self.head])

    def flush(self) -> None:
        self._hand_back()
        self.transport.write(self.head)

    def _hand_back(self) -> None:
        self.cycle.transport = self.transport
        self.sent = True

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's cycle, with the head written together with the first body message."""

    _head_first: _HeadFirst | None = None

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start" and not self.response_started:
            transport, holder = self.transport, _HeadHolder()
            self.transport = holder  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = transport
            if holder.head:
                self._head_first = _HeadFirst(self, transport, holder.head)
                self.transport = self._head_first  # type: ignore[assignment]
            return
        await super().send(message)
        held = self._head_first
        if self.response_complete and held is not None and not held.sent:
            held.flush()  # an answer that wrote no body bytes (HEAD)
