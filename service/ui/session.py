"""The UI's session: a token exchanged for an encrypted, expiring cookie. I/O: none itself;
the middleware authenticates through the same ``TokenAuthenticator`` as the bearer API.

The cookie holds the token itself, sealed with AES-GCM under a key derived from the token
pepper, so every replica opens it, nobody can read or forge it, and each request is
authenticated afresh: a revoked token ends its sessions at once, and the principal's
permissions and scopes are exactly those the JSON API would see for the same token.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from typing import Any
from urllib.parse import urlencode

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.middleware.authentication import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
)
from litestar.response import Redirect
from litestar.types import ASGIApp, Receive, Scope, Send

from service.api.problems import AuthenticationError
from service.commands.token_secrets import Pepper
from service.commands.tokens import InvalidTokenError

COOKIE = "modelreg_session"
# A working day: a forgotten browser does not stay logged in for weeks.
LIFETIME_SECONDS = 8 * 3600
_NONCE_BYTES = 12


class _Sealed(msgspec.Struct, frozen=True, array_like=True):
    token: str
    expires: int  # Unix seconds


class SessionKey:
    """Seals and opens session cookies under a key only the servers hold."""

    def __init__(self, pepper: Pepper) -> None:
        self._aead = AESGCM(pepper.derive("ui-session"))

    def seal(self, token: str, *, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + LIFETIME_SECONDS)
        nonce = os.urandom(_NONCE_BYTES)
        body = self._aead.encrypt(nonce, msgspec.json.encode(_Sealed(token, expires)), b"session")
        return base64.urlsafe_b64encode(nonce + body).decode().rstrip("=")

    def open(self, value: str, *, now: float | None = None) -> str | None:
        """The token in ``value``, or None when it is forged, damaged or expired."""
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], b"session")
            sealed = msgspec.json.decode(plain, type=_Sealed)
        except (binascii.Error, ValueError, InvalidTag, msgspec.DecodeError):
            return None
        if sealed.expires <= (time.time() if now is None else now):
            return None
        return sealed.token


def is_https(request: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """Served over TLS, directly or behind a proxy that says so."""
    forwarded = request.headers.get("x-forwarded-proto", "")
    return request.url.scheme == "https" or forwarded.split(",")[0].strip() == "https"


def session_cookie(request: Request[Any, Any, Any], value: str, *, max_age: int) -> Cookie:
    return Cookie(
        key=COOKIE,
        value=value,
        path="/ui",
        max_age=max_age,
        httponly=True,  # no script reads it, so an injected one cannot steal it
        samesite="strict",  # never sent on a request another site starts
        secure=is_https(request),
    )


FLOW_COOKIE = "modelreg_oidc_flow"


def flow_cookie(request: Request[Any, Any, Any], value: str, *, max_age: int = 600) -> Cookie:
    """The sign-in flow's sealed secrets (``service.identity.flows``), sent only to the
    callback. SameSite=Lax, not Strict: the callback is a top-level navigation coming from
    the provider's site, on which a Strict cookie would not be sent."""
    return Cookie(
        key=FLOW_COOKIE,
        value=value,
        path="/ui/login/oidc",
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=is_https(request),
    )


def log_in(request: Request[Any, Any, Any], response: Response[Any], token: str) -> None:
    key: SessionKey = request.app.state.ui_session_key
    response.set_cookie(session_cookie(request, key.seal(token), max_age=LIFETIME_SECONDS))


def log_out(request: Request[Any, Any, Any], response: Response[Any]) -> None:
    response.set_cookie(session_cookie(request, "", max_age=0))


class LoginRequiredError(AuthenticationError):
    """No valid session: a page answers with a redirect to the login form."""


class SessionMiddleware(AbstractAuthenticationMiddleware):
    """Authenticates a UI request by its session cookie, through the API's authenticator."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app, exclude_from_auth_key="public")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A missing or dead session is no error to show: the login form is the answer.
        # (Litestar would answer a middleware's exception with the app-wide JSON handler.)
        try:
            await super().__call__(scope, receive, send)
        except LoginRequiredError:
            target = scope["path"] + (
                f"?{scope['query_string'].decode()}" if scope.get("query_string") else ""
            )
            redirect = Redirect(f"/ui/login?{urlencode({'next_page': target})}", status_code=303)
            await redirect.to_asgi_response(app=None, request=Request(scope, receive))(
                scope, receive, send
            )

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        key: SessionKey = connection.app.state.ui_session_key
        token = key.open(connection.cookies.get(COOKIE, ""))
        if token is None:
            raise LoginRequiredError("log in first")
        services = connection.app.state.services
        try:
            principal = await services.auth.authenticate(token)
        except InvalidTokenError as exc:
            services.metrics.unauthenticated()
            raise LoginRequiredError(str(exc)) from None
        return AuthenticationResult(user=principal, auth=principal.token_id)
