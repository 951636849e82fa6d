"""``GET /auth/config``: how to sign in through the identity provider, for ``modelreg login``
(which then needs only the registry's URL). Public, because a caller asks it before it has
a token; it names only what the provider publishes anyway (issuer, the public CLI client
id, audience, scopes), never the UI's client secret. Kept out of the OpenAPI document,
whose every operation takes a bearer token."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get

from events.errors import NotFoundError
from service.api.auth import PUBLIC
from service.api.common import services_of


class AuthConfig(msgspec.Struct, frozen=True, kw_only=True):
    issuer: str
    client_id: str
    audience: str
    scope: str
    provider_name: str
    device_authorization_endpoint: str
    token_endpoint: str


class AuthConfigController(Controller):
    path = "/auth"

    @get("/config", opt={PUBLIC: True}, include_in_schema=False)
    async def config(self, request: Request[Any, Any, Any]) -> AuthConfig:
        flows = services_of(request).auth.flows
        if flows is None:
            raise NotFoundError(
                "sign-in through an identity provider is not configured"
                " (MODELREG_OIDC_ISSUER and MODELREG_OIDC_CLIENT_ID)"
            )
        device = await flows.endpoint("device_authorization_endpoint")
        token = await flows.endpoint("token_endpoint")
        return AuthConfig(
            **flows.public_config(), device_authorization_endpoint=device, token_endpoint=token
        )
