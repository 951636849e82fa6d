"""Who is calling: a JWT from the identity provider when one is configured, else one of
modelreg's own tokens. Every route and the UI authenticate through this one door."""

from __future__ import annotations

from service.commands.tokens import Principal, TokenAuthenticator
from service.identity.flows import ProviderFlows
from service.identity.oidc import OidcAuthenticator, looks_like_jwt


class SignIn:
    """``flows``: signing in through the provider's pages (the UI's button, ``modelreg
    login``), when a client id is configured."""

    def __init__(
        self,
        tokens: TokenAuthenticator,
        oidc: OidcAuthenticator | None = None,
        flows: ProviderFlows | None = None,
    ) -> None:
        self.tokens = tokens
        self.oidc = oidc
        self.flows = flows

    async def authenticate(self, secret: str) -> Principal:
        """The principal, or InvalidTokenError (401) with the reason."""
        if self.oidc is not None and looks_like_jwt(secret):
            principal = await self.oidc.authenticate(secret)
            return self.tokens.with_grants(
                principal,
                await self.tokens.access(),
                await self.tokens.recorded_as(principal.name),
            )
        return await self.tokens.authenticate(secret)
