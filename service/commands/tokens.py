"""Issuing, revoking and checking access tokens. I/O: through the event store.

A secret is ``mr_`` + 43 url-safe characters (256 random bits), shown once. The
``token.issued`` event records the token's id, principal, roles and scopes, never the
secret nor a digest of it; the keyed digest that lets a presented secret find its token is
written to ``token_credentials`` in the same transaction (``service.commands.token_secrets``).

The last active admin token cannot be revoked (409 ``last_admin``): revocations of admin
tokens take turns on an advisory lock, so two admins revoking each other at once cannot
both succeed. An operator locked out anyway (the last admin token lost or expired) mints
one with ``modelreg tokens create --admin``, which writes to the database directly.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import asyncpg
import msgspec

from eventlog.listener import Listener
from eventlog.store import EventStore
from events.access import (
    TOKENS,
    IssueToken,
    Permission,
    RevokeToken,
    Role,
    TokenEvent,
    TokenState,
    validate_principal,
)
from events.access_grants import ACCESS, AccessState, Right, granted_rights, token_rights
from events.errors import AlreadyExistsError, ConcurrencyError, ConflictError
from events.streams import ACCESS_STREAM, TOKEN_TYPE, token_stream
from events.subjects import is_subject_id
from service.commands.executor import CommandExecutor, Outcome
from service.commands.token_secrets import (
    Pepper,
    find_token_stream,
    legacy_token_ids,
    store_credential,
)

log = logging.getLogger(__name__)

BOOTSTRAP_TOKEN_ID = "bootstrap"  # noqa: S105 - an id, not a secret
# Revocations of admin tokens take turns on this lock (one per schema).
_ADMIN_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('modelreg:' || current_schema() || ':admin-tokens', 0))"


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who is acting: the token's principal with its roles, permissions and scopes, its
    identity provider's groups, and what grants add (each on its own model pattern)."""

    name: str
    token_id: str
    roles: tuple[Role, ...]
    permissions: frozenset[Permission]
    scopes: tuple[str, ...]
    groups: tuple[str, ...] = ()
    grants: tuple[Right, ...] = ()

    @property
    def rights(self) -> tuple[Right, ...]:
        """Every (permission, pattern) the caller holds: its token's (or identity
        mapping's) permissions on its scopes, then its grants'."""
        roles = ",".join(self.roles) or "none"
        own = token_rights(self.permissions, self.scopes, f"token {self.token_id} (roles {roles})")
        return own + self.grants


class InvalidTokenError(Exception):
    """The presented secret is unknown, revoked or expired."""


class LastAdminError(ConflictError):
    """Revoking this token would leave no active admin token (HTTP 409)."""

    code = "last_admin"


def new_secret() -> str:
    return "mr_" + secrets.token_urlsafe(32)


def covers(principal: Principal, model_name: str | None) -> bool:
    """Whether the token's own scopes include a model (grants aside: they widen single
    actions through ``rights``, never what a listing of the registry shows)."""
    return TokenState(token_id=principal.token_id, scopes=principal.scopes).covers(model_name)


def is_admin(state: TokenState, now: datetime) -> bool:
    """An active token that may administer the whole registry (tokens, policies)."""
    return state.active_at(now) and Role.ADMIN in state.roles and state.covers(None)


async def issue_token(
    executor: CommandExecutor,
    pepper: Pepper,
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
    """Issue a token; return the outcome and the secret (the only time it is known).

    The event and the secret's keyed digest are written in one transaction: a token never
    exists without its credential, nor a credential without its token.
    """
    secret = secret or new_secret()
    token_id = token_id or uuid.uuid4().hex
    if executor.subjects is not None:
        # The token's event names its principal by subject id, as every actor; the name
        # is checked first, since the decider only sees the id.
        principal = await executor.subjects.subject_for(validate_principal(principal))
    command = IssueToken(
        actor=actor,
        now=now or datetime.now(UTC),
        token_id=token_id,
        principal=principal,
        roles=tuple(roles),
        scopes=tuple(scopes),
        expires_at=expires_at,
        description=description,
    )

    async def credential(conn: asyncpg.Connection) -> None:
        await store_credential(conn, token_id, pepper, secret)

    try:
        outcome = await executor.execute_beside(
            token_stream(token_id), TOKENS, command, actor=actor, beside=credential, id_seed=id_seed
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "token_credentials_digest_key":
            raise AlreadyExistsError("a token with this secret exists already") from None
        raise ConflictError(f"token {token_id} exists already", token_id=token_id) from None
    except ConcurrencyError:
        raise ConflictError(f"token {token_id} exists already", token_id=token_id) from None
    return outcome, secret


async def active_admin_ids(executor: CommandExecutor, now: datetime) -> list[str]:
    """The ids of the tokens that may administer the registry right now."""
    found = []
    for stream_id in await executor.store.stream_ids(TOKEN_TYPE):
        _, state = await executor.state_of(stream_id, TOKENS)
        if is_admin(state, now):
            found.append(state.token_id)
    return found


async def revoke_token(
    executor: CommandExecutor,
    token_id: str,
    *,
    actor: str,
    reason: str = "",
    now: datetime | None = None,
) -> Outcome[TokenState, TokenEvent]:
    """Revoke a token, unless it is the last active admin token (``LastAdminError``)."""
    now = now or datetime.now(UTC)
    stream = token_stream(token_id)
    command = RevokeToken(actor=actor, now=now, reason=reason)
    _, state = await executor.state_of(stream, TOKENS)
    if not is_admin(state, now):
        return await executor.execute(stream, TOKENS, command)
    async with executor.store.pool.acquire() as conn, conn.transaction():
        await conn.execute(_ADMIN_LOCK)  # held until this block ends, after the revocation
        if set(await active_admin_ids(executor, now)) <= {token_id}:
            raise LastAdminError(
                f"token {token_id} is the last active admin token: revoking it would leave"
                " nobody able to manage tokens and policies; issue another admin token first"
                " (or, locked out, run `modelreg tokens create --admin` on the database)",
                token_id=token_id,
            )
        return await executor.execute(stream, TOKENS, command)


async def ensure_bootstrap_token(
    executor: CommandExecutor, pepper: Pepper, configured: str | None
) -> str | None:
    """On first start, issue the admin token; return its secret if this call created it.

    The secret is ``configured`` (MODELREG_BOOTSTRAP_TOKEN) when set, else generated. On
    later starts nothing is issued, so a leaked bootstrap secret is fixed by revoking it; a
    configured secret that is not the live bootstrap token is then reported, not ignored
    silently.
    """
    stream = token_stream(BOOTSTRAP_TOKEN_ID)
    if await executor.store.stream_version(stream) > 0:
        if configured is not None:
            await _warn_bootstrap_ignored(executor, pepper, configured)
        return None
    if configured is not None and len(configured) < 16:
        raise ValueError("MODELREG_BOOTSTRAP_TOKEN must be at least 16 characters")
    try:
        _, secret = await issue_token(
            executor,
            pepper,
            actor="modelreg",
            principal="admin",
            roles=(Role.ADMIN,),
            description="bootstrap admin token, created on first start",
            secret=configured,
            token_id=BOOTSTRAP_TOKEN_ID,
        )
    except Exception:
        # Another replica bootstrapped at the same moment: its token stands.
        if await executor.store.stream_version(stream) > 0:
            return None
        raise
    return secret


async def _warn_bootstrap_ignored(
    executor: CommandExecutor, pepper: Pepper, configured: str
) -> None:
    found = await find_token_stream(executor.store.pool, pepper, configured)
    _, state = await executor.state_of(token_stream(BOOTSTRAP_TOKEN_ID), TOKENS)
    if found is not None and found[0] == token_stream(BOOTSTRAP_TOKEN_ID) and not state.revoked:
        return  # the variable holds the live bootstrap token: nothing is ignored
    status = "revoked" if state.revoked else "issued with another secret"
    log.warning(
        "MODELREG_BOOTSTRAP_TOKEN is set but ignored: this registry was bootstrapped on an"
        " earlier start (its bootstrap token is %s), so the variable creates no token. To"
        " regain admin access run `modelreg tokens create ADMIN-NAME --admin` where the"
        " database is reachable (docs/security.md); then unset the variable.",
        status,
    )


async def warn_legacy_tokens(executor: CommandExecutor) -> list[str]:
    """Log (and return) the live tokens still verified by the unkeyed SHA-256 that their
    token.issued event carries (issued before 0.3): whoever reads the log can test guesses
    against it, so they should be rotated."""
    now = datetime.now(UTC)
    live = []
    for token_id in await legacy_token_ids(executor.store.pool):
        _, state = await executor.state_of(token_stream(token_id), TOKENS)
        if state.active_at(now):
            live.append(token_id)
    if live:
        log.warning(
            "%d token(s) issued before 0.3 are verified by an unkeyed SHA-256 recorded in"
            " their token.issued event, which every reader of the log can see: rotate them"
            " (issue a new token, then revoke the old one): %s",
            len(live),
            ", ".join(live),
        )
    return live


def tokens_channel(schema: str) -> str:
    """The channel every append to a token stream NOTIFYs (migration 0008)."""
    return f"modelreg_tokens_{schema}"[:63]


class TokenAuthenticator:
    """Finds the token of a presented secret, and keeps what it found in memory only while
    a LISTEN tells it of every change to any token.

    Without a listener (``listen``), or while its connection is down, every request looks
    the secret up in Postgres (one query), folding the token's stream only when it changed
    since last seen, and reads what is new on the ``access:registry`` stream (grants,
    roles, service accounts: one more query). With the listener up, a secret checked once is answered from memory:
    each event appended to a token stream NOTIFYs at its commit (migration 0008), and any
    notification, and any loss or return of the LISTEN connection, forgets everything.
    Revocation therefore takes effect in a process as soon as Postgres delivers the
    NOTIFY, and at once in the process that revoked (``forget``); expiry is checked
    against the clock on every request. Only accepted tokens are kept: an unknown, revoked
    or expired secret is looked up again each time, so the cache can never accept a
    secret the database refuses.
    """

    def __init__(
        self,
        store: EventStore,
        executor: CommandExecutor,
        pepper: Pepper,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        cache_size: int = 10_000,
    ) -> None:
        self.store = store
        self.executor = executor
        self.pepper = pepper
        self.clock = clock
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[int, TokenState]] = OrderedDict()
        # digest of a secret -> the state of its token, while the listener is up.
        self._accepted: OrderedDict[bytes, TokenState] = OrderedDict()
        self._generation = 0  # moves on every forget: a lookup begun before is not kept
        self._listener: Listener | None = None
        # The roles, grants and service accounts (``access:registry``), kept like tokens:
        # its appends NOTIFY the same channel (migration 0010), so a grant withdrawn
        # anywhere takes effect at the next request.
        self._access: AccessState | None = None

    def listen(self, connect: Callable[[], Awaitable[asyncpg.Connection]], schema: str) -> Listener:
        """The LISTEN that lets this authenticator answer from memory; run it (``run``)."""
        self._listener = Listener(connect, tokens_channel(schema), self.forget)
        return self._listener

    def forget(self) -> None:
        """Drop every token kept in memory (a token changed, or the LISTEN came or went)."""
        self._accepted.clear()
        self._access = None
        self._generation += 1

    def remembers(self, secret: str) -> bool:
        """Would ``secret`` be answered from memory right now?"""
        return self._caching() and self.pepper.digest(secret) in self._accepted

    def _caching(self) -> bool:
        return self._listener is not None and self._listener.listening

    async def authenticate(self, secret: str) -> Principal:
        digest = self.pepper.digest(secret)
        caching = self._caching()
        state = self._accepted.get(digest) if caching else None
        if state is None:
            generation = self._generation
            state = await self._look_up(secret)
            self._check(state)
            # Kept only if nothing changed meanwhile: a NOTIFY that arrived during the
            # look-up may be about this very token.
            if caching and generation == self._generation and self._caching():
                self._accepted[digest] = state
                while len(self._accepted) > self.cache_size:
                    self._accepted.popitem(last=False)
        else:
            self._accepted.move_to_end(digest)
            self._check(state)
        name = await self._name_of(state.principal)
        access = await self.access()
        account = access.service_account(name)
        if account is not None and account.disabled:
            raise InvalidTokenError(f"service account {account.name!r} is disabled")
        principal = Principal(
            name=name,
            token_id=state.token_id,
            roles=state.roles,
            permissions=state.permissions,
            scopes=state.scopes,
        )
        # A token issued since subjects exist names its holder by subject id already.
        recorded = (
            (state.principal,) if is_subject_id(state.principal) else await self.recorded_as(name)
        )
        return self.with_grants(principal, access, recorded)

    async def access(self) -> AccessState:
        """The custom roles, grants and service accounts as they stand now."""
        caching = self._caching()
        if caching and self._access is not None:
            return self._access
        generation = self._generation
        _, access = await self.executor.state_of(ACCESS_STREAM, ACCESS)
        if caching and generation == self._generation and self._caching():
            self._access = access
        return access

    async def recorded_as(self, name: str) -> tuple[str, ...]:
        """The subject id a grant names ``name`` by (grants record people by id, as every
        event does); none without subjects."""
        subjects = self.executor.subjects
        return () if subjects is None else (await subjects.subject_for(name),)

    @staticmethod
    def with_grants(
        principal: Principal, access: AccessState, recorded_as: tuple[str, ...] = ()
    ) -> Principal:
        """``principal`` holding also what the grants naming it (by name or by its subject
        id) or its groups give."""
        granted = granted_rights(access, principal.name, principal.groups, recorded_as)
        return msgspec.structs.replace(principal, grants=granted) if granted else principal

    async def _name_of(self, principal: str) -> str:
        """The name a token's principal goes by in this process (idempotency keys, refusals,
        ``/me``): a token issued since subjects exist records its principal by subject id,
        and the executor maps the name back to that id before any decision."""
        subjects = self.executor.subjects
        if subjects is None or not is_subject_id(principal):
            return principal
        name = await subjects.principal_of(principal)
        if name is None:
            raise InvalidTokenError("this token's subject was erased")
        return name

    def _check(self, state: TokenState) -> None:
        if not state.issued:
            raise InvalidTokenError("unknown token")
        if state.revoked:
            raise InvalidTokenError("this token was revoked")
        if not state.active_at(self.clock()):
            raise InvalidTokenError("this token has expired")

    async def _look_up(self, secret: str) -> TokenState:
        found = await find_token_stream(self.store.pool, self.pepper, secret)
        if found is None:
            raise InvalidTokenError("unknown token")
        stream_id, version = found
        cached = self._cache.get(stream_id)
        if cached is not None and cached[0] == version:
            state = cached[1]
        else:
            version, state = await self.executor.state_of(stream_id, TOKENS)
            self._cache[stream_id] = (version, state)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(stream_id)
        return state
