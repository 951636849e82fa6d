"""Authentication (bearer tokens) and authorisation (permissions, model scopes). I/O: via the
token authenticator (from memory while it listens for changes, else a query or two).

Every route is authenticated unless it opts out with ``opt={"public": True}`` (only the
health endpoints, the OpenAPI schema and ``/auth/config``, which ``modelreg login`` asks
before it holds a token, do). Handlers receive the ``Principal`` and call
``require`` with the permission and, where one is involved, the model name, so a 403
always names what is missing.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.middleware.authentication import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
)
from litestar.types import ASGIApp

from events.access import Permission
from events.access_grants import decide_access
from service.api.problems import AuthenticationError, PermissionDeniedError
from service.commands.tokens import InvalidTokenError, Principal

PUBLIC = "public"


def bearer_secret(header: str) -> str:
    """The token secret of an ``Authorization: Bearer`` header."""
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise AuthenticationError("send 'Authorization: Bearer <token>'")
    return secret.strip()


async def authenticate(services: Any, secret: str) -> Principal:
    """The principal holding ``secret``; ``AuthenticationError`` (401) with the reason."""
    try:
        principal: Principal = await services.auth.authenticate(secret)
    except InvalidTokenError as exc:
        services.metrics.unauthenticated()
        raise AuthenticationError(str(exc)) from None
    return principal


class BearerTokenMiddleware(AbstractAuthenticationMiddleware):
    """Authentication alone, for routes outside ``service.api.edge`` (``/metrics``)."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app, exclude=["^/schema"], exclude_from_auth_key=PUBLIC)

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        secret = bearer_secret(connection.headers.get("authorization", ""))
        principal = await authenticate(connection.app.state.services, secret)
        return AuthenticationResult(user=principal, auth=principal.token_id)


def require(principal: Principal, permission: Permission, model_name: str | None = None) -> None:
    """Refuse (403) unless the principal holds ``permission`` for ``model_name``.

    The principal's rights are (permission, pattern) pairs: its token's permissions on its
    scopes, and each grant's on the grant's own pattern, so a grant never lends its
    permission to the token's models nor the token's to the grant's. ``model_name=None``
    means a registry-wide action, which needs the permission on ``*`` unless it is a read.
    """
    decision = decide_access(principal.rights, permission, model_name)
    if decision.allowed:
        return
    if not any(r.permission is permission for r in principal.rights):
        raise PermissionDeniedError(permission.value)
    if model_name is not None:
        raise PermissionDeniedError(permission.value, scope=f"model {model_name!r}")
    raise PermissionDeniedError(permission.value, scope="the whole registry")
