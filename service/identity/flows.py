"""Signing in through the identity provider's pages: the UI's authorization code flow with
PKCE (RFC 6749 4.1, RFC 7636 S256) and what ``modelreg login`` needs to run the device flow
(RFC 8628) itself. I/O: HTTP to the provider (its discovery document and token endpoint).

Hand-written over httpx rather than with Authlib's client: the flow is three requests and
two hashes, joserfc already validates the tokens, and Authlib would add a second JOSE
library (and its own HTTP session handling) for those few lines.

The browser carries the flow's secrets between the redirect and the callback in a cookie
sealed like the session (AES-GCM under a key from the pepper, expiring after
``FLOW_SECONDS``): ``state`` ties the callback to the browser that started it (login CSRF),
``nonce`` ties the ID token to it (replay), the PKCE verifier ties the code to it (a code
stolen from the redirect is worthless without it). Every replica opens the cookie; nothing
is kept on the server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jws import extract_compact

from service.commands.token_secrets import Pepper
from service.identity.jwks import HTTP_TIMEOUT, IdentityProviderUnavailableError
from service.identity.oidc import OidcAuthenticator, why_refused
from service.settings import Settings, SettingsError

FLOW_SECONDS = 600  # long enough to type a password and answer a second factor
DISCOVERY_SECONDS = 3600.0
_NONCE_BYTES = 12


class SignInRefusedError(Exception):
    """The flow cannot finish; ``status`` is the 4xx to answer, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class FlowConfig:
    issuer: str
    client_id: str
    client_secret: str | None
    redirect_url: str | None
    cli_client_id: str
    provider_name: str
    scopes: str
    audience: str

    @classmethod
    def from_settings(cls, settings: Settings) -> FlowConfig | None:
        """None without an issuer or a client id: only bearer tokens are accepted then."""
        if settings.oidc_issuer is None or not settings.oidc_client_id:
            return None
        if settings.oidc_redirect_url is not None:
            parts = urlsplit(settings.oidc_redirect_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise SettingsError(
                    "MODELREG_OIDC_REDIRECT_URL: an absolute http(s) URL ending in"
                    " /ui/login/oidc/callback"
                )
        scopes = settings.oidc_scopes.split()
        return cls(
            issuer=settings.oidc_issuer.rstrip("/"),
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret or None,
            redirect_url=settings.oidc_redirect_url,
            cli_client_id=settings.oidc_cli_client_id or settings.oidc_client_id,
            provider_name=settings.oidc_provider_name
            or urlsplit(settings.oidc_issuer).hostname
            or "your identity provider",
            # The ID token is the point of the flow: "openid" is always asked for.
            scopes=" ".join(dict.fromkeys(["openid", *scopes])),
            audience=settings.oidc_audience or settings.oidc_client_id,
        )


class Flow(msgspec.Struct, frozen=True, array_like=True):
    """What the callback must find again: in the sealed flow cookie."""

    state: str
    nonce: str
    verifier: str
    redirect_uri: str
    next: str
    expires: int


def challenge_of(verifier: str) -> str:
    """PKCE S256: base64url(sha256(verifier)), unpadded."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class FlowSeal:
    """Seals and opens the flow cookie, like ``service.ui.session.SessionKey``."""

    def __init__(self, pepper: Pepper) -> None:
        self._aead = AESGCM(pepper.derive("ui-oidc-flow"))

    def seal(self, flow: Flow) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        body = self._aead.encrypt(nonce, msgspec.json.encode(flow), b"oidc-flow")
        return base64.urlsafe_b64encode(nonce + body).decode().rstrip("=")

    def open(self, value: str, *, now: float | None = None) -> Flow | None:
        """The flow, or None when the cookie is missing, forged, damaged or expired."""
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], b"oidc-flow")
            flow = msgspec.json.decode(plain, type=Flow)
        except (binascii.Error, ValueError, InvalidTag, msgspec.DecodeError):
            return None
        return flow if flow.expires > (time.time() if now is None else now) else None


class ProviderFlows:
    """The provider's side of the flows: discovery, the authorization URL, the code
    exchange and the ID token's checks."""

    def __init__(
        self,
        config: FlowConfig,
        oidc: OidcAuthenticator,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.oidc = oidc
        self.clock = clock
        self._discovery: dict[str, Any] | None = None
        self._fetched = float("-inf")

    async def discovery(self) -> dict[str, Any]:
        if self._discovery is None or self.clock() - self._fetched >= DISCOVERY_SECONDS:
            url = f"{self.config.issuer}/.well-known/openid-configuration"
            try:
                async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
                    answer = await http.get(url)
                    answer.raise_for_status()
                    document = answer.json()
            except (httpx.HTTPError, ValueError) as exc:
                if self._discovery is not None:  # an hour-old document still serves
                    return self._discovery
                raise IdentityProviderUnavailableError(
                    f"the identity provider's discovery document cannot be fetched ({exc})"
                ) from None
            if not isinstance(document, dict) or document.get("issuer", "").rstrip("/") != (
                self.config.issuer
            ):
                raise IdentityProviderUnavailableError(
                    "the identity provider's discovery document names another issuer"
                )
            self._discovery, self._fetched = document, self.clock()
        return self._discovery

    async def endpoint(self, name: str) -> str:
        found = (await self.discovery()).get(name)
        if not isinstance(found, str) or not found:
            raise IdentityProviderUnavailableError(f"the identity provider publishes no {name}")
        return found

    async def start(self, redirect_uri: str, next_page: str) -> tuple[str, Flow]:
        """Where to send the browser, and the flow to keep in its cookie."""
        flow = Flow(
            state=secrets.token_urlsafe(24),
            nonce=secrets.token_urlsafe(24),
            verifier=secrets.token_urlsafe(48),  # 64 characters, within RFC 7636's 43..128
            redirect_uri=redirect_uri,
            next=next_page,
            expires=int(time.time()) + FLOW_SECONDS,
        )
        query = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": redirect_uri,
            "scope": self.config.scopes,
            "state": flow.state,
            "nonce": flow.nonce,
            "code_challenge": challenge_of(flow.verifier),
            "code_challenge_method": "S256",
        }
        authorize = await self.endpoint("authorization_endpoint")
        separator = "&" if urlsplit(authorize).query else "?"
        return f"{authorize}{separator}{urlencode(query)}", flow

    async def finish(self, flow: Flow, code: str, now: datetime) -> str:
        """The access token for ``code``, once the ID token proved who signed in for this
        flow; SignInRefusedError otherwise."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": flow.redirect_uri,
            "client_id": self.config.client_id,
            "code_verifier": flow.verifier,
        }
        if self.config.client_secret:
            form["client_secret"] = self.config.client_secret
        token_endpoint = await self.endpoint("token_endpoint")
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
                answer = await http.post(token_endpoint, data=form)
                tokens = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise IdentityProviderUnavailableError(
                f"the identity provider's token endpoint did not answer ({exc})"
            ) from None
        if not isinstance(tokens, dict):
            raise SignInRefusedError(502, "the identity provider's token answer is not JSON")
        if answer.status_code != 200:
            error = tokens.get("error", f"HTTP {answer.status_code}")
            described = tokens.get("error_description")
            raise SignInRefusedError(
                400,
                f"the identity provider refused the code: {error}"
                + (f" ({described})" if described else ""),
            )
        id_token, access_token = tokens.get("id_token"), tokens.get("access_token")
        if not isinstance(id_token, str) or not isinstance(access_token, str):
            raise SignInRefusedError(400, "the identity provider returned no id_token")
        await self.check_id_token(id_token, flow.nonce, now)
        return access_token

    async def check_id_token(self, id_token: str, nonce: str, now: datetime) -> None:
        oidc = self.oidc
        try:
            kid = extract_compact(id_token.encode()).headers().get("kid")
        except (JoseError, ValueError, UnicodeError) as exc:
            raise SignInRefusedError(401, f"the ID token is not a signed token ({exc})") from None
        keys = await oidc.keys.keys(kid if isinstance(kid, str) else None)
        try:
            claims = jwt.decode(id_token, keys, algorithms=oidc.config.algorithms).claims
            jwt.JWTClaimsRegistry(
                now=int(now.timestamp()),
                leeway=oidc.config.leeway,
                iss={"essential": True, "value": oidc.config.issuer},
                aud={"essential": True, "value": self.config.client_id},
                exp={"essential": True},
                sub={"essential": True},
                # Minted for this browser's flow, not replayed from another sign-in.
                nonce={"essential": True, "value": nonce},
            ).validate(claims)
        except (JoseError, ValueError) as exc:
            raise SignInRefusedError(401, f"the ID token is refused: {why_refused(exc)}") from None

    def public_config(self) -> dict[str, str]:
        """What ``modelreg login`` needs; nothing secret (never the client secret)."""
        return {
            "issuer": self.config.issuer,
            "client_id": self.config.cli_client_id,
            "audience": self.config.audience,
            "scope": f"{self.config.scopes} offline_access",
            "provider_name": self.config.provider_name,
        }
