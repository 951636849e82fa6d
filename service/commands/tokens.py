"""Issuing, revoking and checking access tokens. I/O: through the event store.

A secret is ``mr_`` + 43 url-safe characters (256 random bits), shown once; the store keeps
its SHA-256 in the ``token.issued`` event and claims the unique key ``token-sha256:<hex>``
in the same transaction, which is how a presented secret finds its token. Because the
secret has full entropy a plain SHA-256 is the right hash: a slow password hash would only
make every request slower without making a 256-bit guess any more feasible.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import msgspec

from eventlog.store import EventStore
from events.access import TOKENS, IssueToken, Permission, RevokeToken, Role, TokenEvent, TokenState
from events.streams import token_stream
from service.commands.executor import CommandExecutor, Outcome

BOOTSTRAP_TOKEN_ID = "bootstrap"  # noqa: S105 - an id, not a secret
_KEY = "token-sha256:"


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is acting: the token's principal with its roles, permissions and scopes."""

    name: str
    token_id: str
    roles: tuple[Role, ...]
    permissions: frozenset[Permission]
    scopes: tuple[str, ...]


class InvalidTokenError(Exception):
    """The presented secret is unknown, revoked or expired."""


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return "mr_" + secrets.token_urlsafe(32)


def covers(principal: Principal, model_name: str | None) -> bool:
    return TokenState(token_id=principal.token_id, scopes=principal.scopes).covers(model_name)


async def issue_token(
    executor: CommandExecutor,
    *,
    actor: str,
    principal: str,
    roles: Sequence[Role],
    scopes: Sequence[str] = (),
    expires_at: datetime | None = None,
    description: str = "",
    secret: str | None = None,
    token_id: str | None = None,
    now: datetime | None = None,
    id_seed: str | None = None,
) -> tuple[Outcome[TokenState, TokenEvent], str]:
    """Issue a token; return the outcome and the secret (the only time it is known)."""
    secret = secret or new_secret()
    token_id = token_id or uuid.uuid4().hex
    digest = secret_hash(secret)
    command = IssueToken(
        actor=actor,
        now=now or datetime.now(UTC),
        token_id=token_id,
        principal=principal,
        roles=tuple(roles),
        scopes=tuple(scopes),
        secret_sha256=digest,
        expires_at=expires_at,
        description=description,
    )
    outcome = await executor.execute(
        token_stream(token_id),
        TOKENS,
        command,
        id_seed=id_seed,
        keys=lambda _e, _s: ([_KEY + digest], ()),
    )
    return outcome, secret


async def revoke_token(
    executor: CommandExecutor, token_id: str, *, actor: str, reason: str = ""
) -> Outcome[TokenState, TokenEvent]:
    return await executor.execute(
        token_stream(token_id),
        TOKENS,
        RevokeToken(actor=actor, now=datetime.now(UTC), reason=reason),
    )


async def ensure_bootstrap_token(executor: CommandExecutor, configured: str | None) -> str | None:
    """On first start, issue the admin token; return its secret if this call created it.

    The secret is ``configured`` (MODELREG_BOOTSTRAP_TOKEN) when set, else generated. On
    later starts nothing happens, so a leaked bootstrap secret is fixed by revoking it.
    """
    if await executor.store.stream_version(token_stream(BOOTSTRAP_TOKEN_ID)) > 0:
        return None
    if configured is not None and len(configured) < 16:
        raise ValueError("MODELREG_BOOTSTRAP_TOKEN must be at least 16 characters")
    try:
        _, secret = await issue_token(
            executor,
            actor="modelreg",
            principal="admin",
            roles=(Role.ADMIN,),
            description="bootstrap admin token, created on first start",
            secret=configured,
            token_id=BOOTSTRAP_TOKEN_ID,
        )
    except Exception:
        # Another replica bootstrapped at the same moment: its token stands.
        if await executor.store.stream_version(token_stream(BOOTSTRAP_TOKEN_ID)) > 0:
            return None
        raise
    return secret


class TokenAuthenticator:
    """Finds the token of a presented secret in one query, folding its stream only when it
    changed since last seen, so a revocation takes effect on the very next request."""

    def __init__(
        self,
        store: EventStore,
        executor: CommandExecutor,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        cache_size: int = 10_000,
    ) -> None:
        self.store = store
        self.executor = executor
        self.clock = clock
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[int, TokenState]] = OrderedDict()

    async def authenticate(self, secret: str) -> Principal:
        digest = secret_hash(secret)
        row = await self.store.pool.fetchrow(
            "SELECT k.stream_id, s.version FROM unique_keys k JOIN streams s USING (stream_id) WHERE k.key = $1",
            _KEY + digest,
        )
        if row is None:
            raise InvalidTokenError("unknown token")
        cached = self._cache.get(row["stream_id"])
        if cached is not None and cached[0] == row["version"]:
            state = cached[1]
        else:
            version, state = await self.executor.state_of(row["stream_id"], TOKENS)
            self._cache[row["stream_id"]] = (version, state)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(row["stream_id"])
        if not hmac.compare_digest(state.secret_sha256, digest):
            raise InvalidTokenError("unknown token")
        if state.revoked:
            raise InvalidTokenError("this token was revoked")
        if not state.active_at(self.clock()):
            raise InvalidTokenError("this token has expired")
        return Principal(
            name=state.principal,
            token_id=state.token_id,
            roles=state.roles,
            permissions=state.permissions,
            scopes=state.scopes,
        )
