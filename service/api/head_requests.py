"""HEAD for every GET route (RFC 9110 section 9.3.2): the GET's status and headers, no body.

Litestar routes HEAD only to handlers declared for it, so ``curl -I``, fsspec's
``HTTPFileSystem`` (which sizes a file with HEAD before it reads ranges of it), link
checkers and download managers got 405 from every GET route but the two with a HEAD
handler of their own (a blob, an upload session). This layer wraps the app's ASGI
handler, ahead of routing: a HEAD that the routes answer 405 is run again as the GET of
the same path, through the same authentication, scopes and errors, and only the GET's
head is sent. The API's request metrics (service.api.http_metrics) count it as a GET.

A GET that streams (a model file, a version's archive) is told the client has gone once
its head and first chunk are out, so it stops reading and hashing the rest of the file.
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send
from litestar.types.asgi_types import HTTPDisconnectEvent, HTTPRequestEvent, HTTPResponseBodyEvent

_NOT_ALLOWED = 405
_EMPTY_REQUEST = HTTPRequestEvent(type="http.request", body=b"", more_body=False)
_GONE = HTTPDisconnectEvent(type="http.disconnect")


def _body_end(more: bool = False) -> HTTPResponseBodyEvent:
    return HTTPResponseBodyEvent(type="http.response.body", body=b"", more_body=more)


def serve_head_as_get(app: ASGIApp) -> ASGIApp:
    """``app`` answering a HEAD that it would refuse with 405 as the GET of that path."""

    async def layer(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] != "HEAD":
            await app(scope, receive, send)
            return
        # Each pass gets the scope as it came (``_fresh``): routing writes into it, and
        # Litestar keeps per-request state in its ``state`` dict.
        pristine: dict[str, Any] = dict(scope)
        refused = False

        async def sending_unless_refused(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start" and message["status"] == _NOT_ALLOWED:
                refused = True
            if refused:
                return
            if message["type"] == "http.response.body":  # an answer to HEAD has no content
                await send(_body_end(message.get("more_body", False)))
            else:
                await send(message)

        await app(_fresh(pristine, "HEAD"), receive, sending_unless_refused)
        if refused:
            await _get_without_body(app, _fresh(pristine, "GET"), send)

    return layer


def _fresh(pristine: dict[str, Any], method: str) -> Scope:
    state = dict(pristine.get("state", {}))
    return {**pristine, "method": method, "state": state}  # type: ignore[return-value]


async def _get_without_body(app: ASGIApp, scope: Scope, send: Send) -> None:
    """Run the GET, send its head and end the body at its first chunk."""
    ended = asyncio.Event()
    asked = False

    async def receiving() -> ReceiveMessage:
        # A HEAD carries no body to read; after that, the only news is that the client
        # is gone, which a streaming response takes as its cue to stop.
        nonlocal asked
        if not asked:
            asked = True
            return _EMPTY_REQUEST
        await ended.wait()
        return _GONE

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            await send(message)
        elif message["type"] == "http.response.body" and not ended.is_set():
            ended.set()
            await send(_body_end())

    await app(scope, receiving, sending)
