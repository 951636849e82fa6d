"""Access tokens and what their roles may do: the ``token:{token_id}`` stream. Pure.

A token is issued to a principal with one or more roles, optionally narrowed to models
whose names start with given prefixes, optionally expiring; it can be revoked. No event carries the secret or any digest of it:
events are read by auditors and published on NATS, so the shell keeps a keyed digest in a
table of its own (``service.commands.token_secrets``) and shows the secret once, at issue.

    reader       read everything in scope
    contributor  + register models and versions, log metrics, tags, aliases,
                   request promotions, report deployments
    approver     + approve or reject promotion requests (read included)
    admin        everything: tokens, policies, archive/restore, direct transitions
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar, assert_never

import msgspec

from events.base import Command, Decider, Event, UtcDateTime
from events.errors import ConflictError, NotFoundError, ValidationError
from events.names import validate_id
from events.streams import TOKEN_TYPE

STREAM_TYPE = TOKEN_TYPE
MAX_SCOPES = 50
_PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_SCOPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,255}\*?|\*")


class Role(enum.StrEnum):
    READER = "reader"
    CONTRIBUTOR = "contributor"
    APPROVER = "approver"
    ADMIN = "admin"


class Permission(enum.StrEnum):
    READ = "read"
    WRITE = "write"  # register, tag, metrics, aliases, promotion requests, deployment reports
    APPROVE = "approve"  # decide promotion requests
    ADMIN = "admin"  # tokens, policies, archive/restore, direct stage transitions


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.READER: frozenset({Permission.READ}),
    Role.CONTRIBUTOR: frozenset({Permission.READ, Permission.WRITE}),
    Role.APPROVER: frozenset({Permission.READ, Permission.APPROVE}),
    Role.ADMIN: frozenset(Permission),
}


class TokenIssued(Event, frozen=True, kw_only=True):
    """v2: v1 also carried ``secret_sha256``, an unkeyed digest of the secret."""

    event_type: ClassVar[str] = "token.issued"
    schema_version: ClassVar[int] = 2
    token_id: str
    principal: str
    roles: tuple[Role, ...]
    scopes: tuple[str, ...]
    expires_at: UtcDateTime | None
    description: str


class TokenRevoked(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "token.revoked"
    token_id: str
    reason: str


TokenEvent = TokenIssued | TokenRevoked
TOKEN_EVENT_TYPES: tuple[type[Event], ...] = (TokenIssued, TokenRevoked)


def token_issued_v1_to_v2(fields: dict[str, Any]) -> dict[str, Any]:
    """Drop v1's ``secret_sha256``: the recorded bytes keep it (they are immutable), but no
    fold sees it; the shell verifies such a token by the unique key it claimed at issue."""
    return {k: v for k, v in fields.items() if k != "secret_sha256"}


TOKEN_UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    (TokenIssued.event_type, 1): token_issued_v1_to_v2
}


class IssueToken(Command, frozen=True, kw_only=True):
    token_id: str
    principal: str
    roles: tuple[Role, ...]
    scopes: tuple[str, ...] = ()
    expires_at: UtcDateTime | None = None
    description: str = ""


class RevokeToken(Command, frozen=True, kw_only=True):
    reason: str = ""


TokenCommand = IssueToken | RevokeToken


class TokenState(msgspec.Struct, frozen=True, kw_only=True):
    token_id: str = ""
    principal: str = ""
    roles: tuple[Role, ...] = ()
    scopes: tuple[str, ...] = ()
    expires_at: UtcDateTime | None = None
    description: str = ""
    revoked: bool = False

    @property
    def issued(self) -> bool:
        return bool(self.token_id)

    def active_at(self, now: datetime) -> bool:
        return (
            self.issued and not self.revoked and (self.expires_at is None or now < self.expires_at)
        )

    @property
    def permissions(self) -> frozenset[Permission]:
        granted: frozenset[Permission] = frozenset()
        for role in self.roles:
            granted |= ROLE_PERMISSIONS[role]
        return granted

    def covers(self, model_name: str | None) -> bool:
        """Whether the token's scopes include a model (``None``: registry-wide things)."""
        if not self.scopes or "*" in self.scopes:
            return True
        if model_name is None:
            return False
        return any(
            model_name.startswith(s[:-1]) if s.endswith("*") else model_name == s
            for s in self.scopes
        )


def initial_state() -> TokenState:
    return TokenState()


def evolve(state: TokenState, event: TokenEvent) -> TokenState:
    match event:
        case TokenIssued():
            return TokenState(
                token_id=event.token_id,
                principal=event.principal,
                roles=event.roles,
                scopes=event.scopes,
                expires_at=event.expires_at,
                description=event.description,
            )
        case TokenRevoked():
            return msgspec.structs.replace(state, revoked=True)
        case _:
            assert_never(event)


def decide(command: TokenCommand, state: TokenState) -> list[TokenEvent]:
    match command:
        case IssueToken():
            return _issue(command, state)
        case RevokeToken():
            if not state.issued:
                raise NotFoundError("no such token")
            if state.revoked:
                return []
            return [TokenRevoked(token_id=state.token_id, reason=command.reason)]
        case _:
            assert_never(command)


def validate_principal(principal: str) -> str:
    if not _PRINCIPAL.fullmatch(principal):
        raise ValidationError(
            "principal",
            "pattern",
            "principal must be 1-128 of A-Z a-z 0-9 . _ @ + -, starting alphanumeric",
        )
    return principal


def _issue(command: IssueToken, state: TokenState) -> list[TokenEvent]:
    if state.issued:
        raise ConflictError(f"token {command.token_id} exists already", token_id=command.token_id)
    validate_id(command.token_id, "token_id")
    validate_principal(command.principal)
    if not command.roles:
        raise ValidationError("roles", "required", "a token needs at least one role")
    _validate_scopes(command.scopes)
    if command.expires_at is not None and command.expires_at <= command.now:
        raise ValidationError("expires_at", "range", "a token must expire in the future")
    return [
        TokenIssued(
            token_id=command.token_id,
            principal=command.principal,
            roles=tuple(dict.fromkeys(command.roles)),
            scopes=command.scopes,
            expires_at=command.expires_at,
            description=command.description,
        )
    ]


def _validate_scopes(scopes: tuple[str, ...]) -> None:
    if len(scopes) > MAX_SCOPES:
        raise ValidationError("scopes", "too_many", f"at most {MAX_SCOPES} scopes", max=MAX_SCOPES)
    for i, scope in enumerate(scopes):
        if not _SCOPE.fullmatch(scope):
            raise ValidationError(
                f"scopes[{i}]", "pattern", "a scope is a model name, or a name prefix ending in *"
            )


TOKENS: Decider[TokenState, TokenCommand, TokenEvent] = Decider(
    stream_type=STREAM_TYPE,
    initial_state=initial_state,
    evolve=evolve,
    decide=decide,
    state_type=TokenState,
)
