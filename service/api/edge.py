"""The edge of every API request, one layer: counted and timed (``service.api.http_metrics``),
given its correlation id (``service.api.tracing``), authenticated (``service.api.auth``),
and an error raised by any of that, or by the layers below it (idempotency), answered
here. I/O: via the token authenticator.

These were four middlewares, each a coroutine and a wrapper around ``send`` per request;
on a small read they cost more than the read's query. Their order is kept: the metrics see
every answer (a 401 as a 401, not the 200 Litestar's own edge would count them as,
litestar#4747), the correlation id is said on errors too, and authentication comes before
anything that needs a principal.

Routes that opt out (``opt={"public": True}``) and CORS preflights (``OPTIONS``) are not
authenticated, as Litestar's authentication middleware did not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from litestar import Request
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.api.auth import PUBLIC, authenticate
from service.api.http_metrics import finished, started
from service.api.tracing import CORRELATION_HEADER, correlate
from service.commands.executor import CORRELATION_ID

_AUTHORIZATION = b"authorization"


def edge(secret_of: Callable[[str], str]) -> Callable[[ASGIApp], ASGIApp]:
    """The layer for routes whose token ``secret_of`` reads from the ``Authorization``
    header (raising ``AuthenticationError`` when it cannot)."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            method: str = scope["method"]  # type: ignore[typeddict-item]  # HTTP routes only
            template: str = scope["path_template"]
            running = started(method, template)
            correlation = correlate(scope)
            said = (CORRELATION_HEADER, str(correlation).encode())
            status = 0

            async def sending(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message = {**message, "headers": [*message.get("headers", ()), said]}
                await send(message)

            token = CORRELATION_ID.set(correlation)
            began = time.perf_counter()
            try:
                try:
                    route = scope["route_handler"]
                    if method != "OPTIONS" and not route.opt.get(PUBLIC):
                        header = next((v for k, v in scope["headers"] if k == _AUTHORIZATION), b"")
                        principal = await authenticate(
                            scope["app"].state.services, secret_of(header.decode("latin-1"))
                        )
                        scope["user"] = principal
                        scope["auth"] = principal.token_id
                    await app(scope, receive, sending)
                except Exception as exc:
                    if status or not await _answered(exc, scope, receive, sending):
                        raise
            finally:
                CORRELATION_ID.reset(token)
                # An error past this layer is answered 500 at the app's edge.
                finished(running, method, template, status or 500, time.perf_counter() - began)

        return middleware

    return wrap


async def _answered(exc: Exception, scope: Scope, receive: Receive, send: Send) -> bool:
    """Answer ``exc`` with its problem response, as Litestar would at the app's edge: its
    handler is looked up by the exception's class hierarchy among the route's handlers.
    False when none handles it (Litestar's edge answers it, 500)."""
    handlers = scope["route_handler"].resolve_exception_handlers()
    handler = next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)
    if handler is None:
        return False
    request: Request[Any, Any, Any] = Request(scope, receive)
    response = handler(request, exc)
    await response.to_asgi_response(app=None, request=request)(scope, receive, send)
    return True
