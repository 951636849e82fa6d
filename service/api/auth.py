"""Authentication (bearer tokens; HTTP Basic with the token as password on the MLflow
routes) and authorisation (permissions, model scopes). I/O: via the token authenticator
(one query per request).

Every route is authenticated unless it opts out with ``opt={"public": True}`` (only the
health endpoints and the OpenAPI schema do). Handlers receive the ``Principal`` and call
``require`` with the permission and, where one is involved, the model name, so a 403
always names what is missing.
"""

from __future__ import annotations

import base64
import binascii
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


def basic_password(credentials: str) -> str | None:
    """The password of an HTTP Basic credential (RFC 7617: base64 of ``user:password``);
    None unless it is valid base64 of UTF-8 text holding a colon."""
    try:
        text = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, colon, password = text.partition(":")
    return password if colon else None


class BearerTokenMiddleware(AbstractAuthenticationMiddleware):
    # MLflow clients send MLFLOW_TRACKING_USERNAME/PASSWORD as HTTP Basic; the routes that
    # serve them take the token secret as the password (the user name is not checked: the
    # token alone says who is calling).
    accepts_basic = False

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app, exclude=["^/schema"], exclude_from_auth_key=PUBLIC)

    def secret_of(self, header: str) -> str | None:
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer":
            return credentials.strip() or None
        if self.accepts_basic and scheme.lower() == "basic":
            return (basic_password(credentials) or "").strip() or None
        return None

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        secret = self.secret_of(connection.headers.get("authorization", ""))
        if secret is None:
            raise AuthenticationError(
                "send 'Authorization: Bearer <token>'"
                + (" or HTTP Basic with the token as password" if self.accepts_basic else "")
            )
        services = connection.app.state.services
        try:
            principal = await services.auth.authenticate(secret)
        except InvalidTokenError as exc:
            services.metrics.unauthenticated()
            raise AuthenticationError(str(exc)) from None
        return AuthenticationResult(user=principal, auth=principal.token_id)


class BearerOrBasicMiddleware(BearerTokenMiddleware):
    """Bearer, or HTTP Basic with the token secret as the password (MLflow's clients)."""

    accepts_basic = True


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
