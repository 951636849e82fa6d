"""Bearer JWTs from the organisation's identity provider, turned into a ``Principal``. I/O:
the provider's keys (``service.identity.jwks``).

A token is accepted when its signature verifies with one of the provider's keys under an
algorithm on the pinned list (never ``none``, never a symmetric one: a public key must not
double as an HMAC secret), and its claims say: this issuer, this audience, not expired and
already valid (``exp``/``nbf``/``iat``, with at most ``MODELREG_OIDC_LEEWAY`` seconds of clock
skew), and who (``sub`` and the principal claim). The caller's groups claim decides roles
and model scopes (``service.identity.mapping``); a caller none of whose groups is mapped is
authenticated but may do nothing (every request answers 403, naming what is missing).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jws import extract_compact

from events.access import ROLE_PERMISSIONS, Permission, Role
from service.commands.tokens import InvalidTokenError, Principal
from service.identity.jwks import JwksSource
from service.identity.mapping import Grant, grant_for, parse_group_roles
from service.settings import Settings, SettingsError

SIGNING_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


@dataclass(frozen=True, slots=True)
class OidcConfig:
    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    leeway: int
    principal_claim: str
    groups_claim: str
    grants: tuple[Grant, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcConfig | None:
        """None when no issuer is configured; SettingsError naming the variable otherwise."""
        if settings.oidc_issuer is None:
            return None
        if not settings.oidc_audience:
            raise SettingsError("MODELREG_OIDC_AUDIENCE: required with MODELREG_OIDC_ISSUER")
        algorithms = tuple(a.strip() for a in settings.oidc_algorithms.split(",") if a.strip())
        refused = [a for a in algorithms if a not in SIGNING_ALGORITHMS]
        if refused or not algorithms:
            raise SettingsError(
                f"MODELREG_OIDC_ALGORITHMS: {', '.join(refused) or 'none given'} not allowed;"
                f" choose from {', '.join(sorted(SIGNING_ALGORITHMS))}"
            )
        try:
            grants = parse_group_roles(settings.oidc_group_roles)
        except ValueError as exc:
            raise SettingsError(f"MODELREG_OIDC_GROUP_ROLES: {exc}") from None
        return cls(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            algorithms=algorithms,
            leeway=settings.oidc_leeway,
            principal_claim=settings.oidc_principal_claim,
            groups_claim=settings.oidc_groups_claim,
            grants=grants,
        )


def looks_like_jwt(secret: str) -> bool:
    """A compact JWS (three dot-separated parts, a JSON header); modelreg's own secrets
    never hold a dot."""
    return secret.count(".") == 2 and secret.startswith("eyJ")


class OidcAuthenticator:
    def __init__(self, config: OidcConfig, keys: JwksSource, clock: Callable[[], datetime]) -> None:
        self.config = config
        self.keys = keys
        self.clock = clock

    async def authenticate(self, token: str) -> Principal:
        try:
            kid = extract_compact(token.encode()).headers().get("kid")
        except (JoseError, ValueError, UnicodeError) as exc:
            raise InvalidTokenError(f"not a signed token ({why_refused(exc)})") from None
        keys = await self.keys.keys(kid if isinstance(kid, str) else None)
        config = self.config
        try:
            claims = jwt.decode(token, keys, algorithms=config.algorithms).claims
            jwt.JWTClaimsRegistry(
                now=int(self.clock().timestamp()),
                leeway=config.leeway,
                iss={"essential": True, "value": config.issuer},
                aud={"essential": True, "value": config.audience},
                exp={"essential": True},
                sub={"essential": True},
            ).validate(claims)
        except (JoseError, ValueError) as exc:
            raise InvalidTokenError(
                f"the identity provider's token was refused: {why_refused(exc)}"
            ) from None
        name = claims.get(config.principal_claim)
        if not isinstance(name, str) or not _PRINCIPAL.fullmatch(name):
            raise InvalidTokenError(
                f"the token's {config.principal_claim!r} claim is missing or not a principal name"
            )
        groups = claims.get(config.groups_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        grant = grant_for(config.grants, (g for g in groups if isinstance(g, str)))
        roles: tuple[Role, ...] = grant.roles if grant else ()
        permissions: frozenset[Permission] = frozenset().union(
            *(ROLE_PERMISSIONS[r] for r in roles)
        )
        subject = f"{config.issuer}\n{claims['sub']}".encode()
        return Principal(
            name=name,
            # Stable per person at this provider, and no personal data in it.
            token_id="oidc-" + hashlib.sha256(subject).hexdigest()[:20],
            roles=roles,
            permissions=permissions,
            scopes=grant.scopes if grant else (),
            groups=tuple(g for g in groups if isinstance(g, str))[:100],
        )


def why_refused(exc: Exception) -> str:
    if isinstance(exc, JoseError):
        return f"{exc.error}: {exc.description}" if exc.description else exc.error
    return str(exc)
