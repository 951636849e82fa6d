"""Authentication (bearer tokens) and authorisation (permissions, model scopes). I/O: via the
token authenticator (one query per request).

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
from service.api.problems import AuthenticationError, PermissionDeniedError
from service.commands.tokens import InvalidTokenError, Principal, covers

PUBLIC = "public"


class BearerTokenMiddleware(AbstractAuthenticationMiddleware):
    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app, exclude=["^/schema"], exclude_from_auth_key=PUBLIC)

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise AuthenticationError("send 'Authorization: Bearer <token>'")
        services = connection.app.state.services
        try:
            principal = await services.auth.authenticate(secret.strip())
        except InvalidTokenError as exc:
            services.metrics.unauthenticated()
            raise AuthenticationError(str(exc)) from None
        return AuthenticationResult(user=principal, auth=principal.token_id)


def require(principal: Principal, permission: Permission, model_name: str | None = None) -> None:
    """Refuse (403) unless the principal holds ``permission`` for ``model_name``.

    ``model_name=None`` means a registry-wide action, which a token narrowed to some models
    may only perform when it is a read.
    """
    if permission not in principal.permissions:
        raise PermissionDeniedError(permission.value)
    if model_name is not None and not covers(principal, model_name):
        raise PermissionDeniedError(permission.value, scope=f"model {model_name!r}")
    if model_name is None and permission is not Permission.READ and not covers(principal, None):
        raise PermissionDeniedError(permission.value, scope="the whole registry")
