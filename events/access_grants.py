"""Custom roles, grants and service accounts: the ``access:registry`` stream. Pure.

A token carries fixed roles narrowed by its scopes (``events.access``); an OIDC user gets
roles from the configured group mapping. On top of either, admins record here:

    role             a named set of permissions (read, write, approve, admin); the four
                     built-in roles are always there and cannot be redefined or removed
    grant            (principal or group) -> role on a model pattern (a name, a prefix*
                     or *); a caller holds every grant naming it or one of its groups,
                     each ONLY on its own pattern, so a grant never widens what the
                     caller's token may do elsewhere
    service account  a principal for CI: the roles and scopes its tokens carry and the
                     longest a token of it may live; disabling it stops all its tokens

One stream for all three: they are few, changed rarely and by admins only, and one stream
makes "who could do what at position T" a single fold, and a role removal that races a
grant of that role a plain version conflict.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import ClassVar, assert_never

import msgspec

from events.access import ROLE_PERMISSIONS, Permission, Role
from events.base import Command, Decider, Event
from events.errors import ConflictError, NotFoundError, ValidationError
from events.names import validate_id
from events.streams import ACCESS_STREAM, ACCESS_TYPE

STREAM_TYPE = ACCESS_TYPE
STREAM_ID = ACCESS_STREAM
MAX_ROLES = 100
MAX_GRANTS = 1000
MAX_SERVICE_ACCOUNTS = 1000
MAX_TEXT = 500
DEFAULT_MAX_LIFETIME = timedelta(days=90)
# However an account is configured, none of its tokens lives longer than this: a CI secret
# that leaks must stop working by itself within a bounded time.
LIFETIME_UPPER_BOUND = timedelta(days=365)

_ROLE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
# No white space as Python's re or ECMA 262 (the API's document) reads it, spelled out.
_GROUP = re.compile(
    "[^\\t\\n\\u000b\\f\\r \\u001c-\\u001f\\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff=;:,|]{1,256}"
)
_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,255}\*?|\*")
BUILTIN_ROLES: dict[str, frozenset[Permission]] = {
    role.value: perms for role, perms in ROLE_PERMISSIONS.items()
}


class SubjectKind(enum.StrEnum):
    PRINCIPAL = "principal"
    GROUP = "group"


# ------------------------------------------------------------------------------ events


class RoleDefined(Event, frozen=True, kw_only=True):
    """A custom role defined, or redefined with other permissions."""

    event_type: ClassVar[str] = "access.role_defined"
    role: str
    permissions: tuple[Permission, ...]
    description: str


class RoleRemoved(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "access.role_removed"
    role: str
    reason: str


class GrantGiven(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "access.grant_given"
    grant_id: str
    subject_kind: SubjectKind
    subject: str
    role: str
    pattern: str
    given_by: str
    reason: str


class GrantWithdrawn(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "access.grant_withdrawn"
    grant_id: str
    withdrawn_by: str
    reason: str


class ServiceAccountCreated(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "access.service_account_created"
    name: str
    roles: tuple[Role, ...]
    scopes: tuple[str, ...]
    max_lifetime_seconds: int
    description: str


class ServiceAccountDisabled(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "access.service_account_disabled"
    name: str
    reason: str


AccessEvent = (
    RoleDefined
    | RoleRemoved
    | GrantGiven
    | GrantWithdrawn
    | ServiceAccountCreated
    | ServiceAccountDisabled
)
ACCESS_EVENT_TYPES: tuple[type[Event], ...] = (
    RoleDefined,
    RoleRemoved,
    GrantGiven,
    GrantWithdrawn,
    ServiceAccountCreated,
    ServiceAccountDisabled,
)

# ------------------------------------------------------------------------------ commands


class DefineRole(Command, frozen=True, kw_only=True):
    role: str
    permissions: tuple[Permission, ...]
    description: str = ""


class RemoveRole(Command, frozen=True, kw_only=True):
    role: str
    reason: str = ""


class GiveGrant(Command, frozen=True, kw_only=True):
    grant_id: str
    subject_kind: SubjectKind
    subject: str
    role: str
    pattern: str
    reason: str = ""


class WithdrawGrant(Command, frozen=True, kw_only=True):
    grant_id: str
    reason: str = ""


class CreateServiceAccount(Command, frozen=True, kw_only=True):
    name: str
    roles: tuple[Role, ...]
    scopes: tuple[str, ...] = ()
    max_lifetime_seconds: int = int(DEFAULT_MAX_LIFETIME.total_seconds())
    description: str = ""


class DisableServiceAccount(Command, frozen=True, kw_only=True):
    name: str
    reason: str = ""


AccessCommand = (
    DefineRole
    | RemoveRole
    | GiveGrant
    | WithdrawGrant
    | CreateServiceAccount
    | DisableServiceAccount
)

# ------------------------------------------------------------------------------ state


class CustomRole(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    permissions: tuple[Permission, ...]
    description: str = ""


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    grant_id: str
    subject_kind: SubjectKind
    subject: str
    role: str
    pattern: str
    given_by: str
    reason: str = ""


class ServiceAccount(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    roles: tuple[Role, ...]
    scopes: tuple[str, ...]
    max_lifetime_seconds: int
    description: str = ""
    disabled: bool = False
    disabled_reason: str = ""


class AccessState(msgspec.Struct, frozen=True, kw_only=True):
    roles: tuple[CustomRole, ...] = ()
    grants: tuple[Grant, ...] = ()
    service_accounts: tuple[ServiceAccount, ...] = ()

    def role(self, name: str) -> CustomRole | None:
        return next((r for r in self.roles if r.name == name), None)

    def grant(self, grant_id: str) -> Grant | None:
        return next((g for g in self.grants if g.grant_id == grant_id), None)

    def service_account(self, name: str) -> ServiceAccount | None:
        return next((a for a in self.service_accounts if a.name == name), None)

    def permissions_of(self, role: str) -> frozenset[Permission]:
        """A role's permissions; none for a role that no longer exists."""
        if role in BUILTIN_ROLES:
            return BUILTIN_ROLES[role]
        custom = self.role(role)
        return frozenset(custom.permissions) if custom else frozenset()


def initial_state() -> AccessState:
    return AccessState()


def evolve(state: AccessState, event: AccessEvent) -> AccessState:
    match event:
        case RoleDefined():
            role = CustomRole(
                name=event.role, permissions=event.permissions, description=event.description
            )
            kept = tuple(r for r in state.roles if r.name != event.role)
            return msgspec.structs.replace(state, roles=(*kept, role))
        case RoleRemoved():
            return msgspec.structs.replace(
                state, roles=tuple(r for r in state.roles if r.name != event.role)
            )
        case GrantGiven():
            grant = Grant(
                grant_id=event.grant_id,
                subject_kind=event.subject_kind,
                subject=event.subject,
                role=event.role,
                pattern=event.pattern,
                given_by=event.given_by,
                reason=event.reason,
            )
            return msgspec.structs.replace(state, grants=(*state.grants, grant))
        case GrantWithdrawn():
            return msgspec.structs.replace(
                state, grants=tuple(g for g in state.grants if g.grant_id != event.grant_id)
            )
        case ServiceAccountCreated():
            account = ServiceAccount(
                name=event.name,
                roles=event.roles,
                scopes=event.scopes,
                max_lifetime_seconds=event.max_lifetime_seconds,
                description=event.description,
            )
            return msgspec.structs.replace(
                state, service_accounts=(*state.service_accounts, account)
            )
        case ServiceAccountDisabled():
            return msgspec.structs.replace(
                state,
                service_accounts=tuple(
                    msgspec.structs.replace(a, disabled=True, disabled_reason=event.reason)
                    if a.name == event.name
                    else a
                    for a in state.service_accounts
                ),
            )
        case _:
            assert_never(event)


# ------------------------------------------------------------------------------ decisions


def decide(command: AccessCommand, state: AccessState) -> list[AccessEvent]:
    match command:
        case DefineRole():
            return _define_role(command, state)
        case RemoveRole():
            return _remove_role(command, state)
        case GiveGrant():
            return _give_grant(command, state)
        case WithdrawGrant():
            if state.grant(command.grant_id) is None:
                raise NotFoundError(f"no grant {command.grant_id!r}", grant_id=command.grant_id)
            _text("reason", command.reason)
            return [
                GrantWithdrawn(
                    grant_id=command.grant_id, withdrawn_by=command.actor, reason=command.reason
                )
            ]
        case CreateServiceAccount():
            return _create_account(command, state)
        case DisableServiceAccount():
            account = state.service_account(command.name)
            if account is None:
                raise NotFoundError(f"no service account {command.name!r}", name=command.name)
            _text("reason", command.reason)
            if account.disabled:
                return []
            return [ServiceAccountDisabled(name=command.name, reason=command.reason)]
        case _:
            assert_never(command)


def _text(field: str, value: str) -> None:
    if len(value) > MAX_TEXT:
        raise ValidationError(field, "too_long", f"{field} is at most {MAX_TEXT} characters")


def _define_role(command: DefineRole, state: AccessState) -> list[AccessEvent]:
    if command.role in BUILTIN_ROLES:
        raise ValidationError(
            "role", "builtin", f"{command.role!r} is a built-in role and cannot be redefined"
        )
    if not _ROLE.fullmatch(command.role):
        raise ValidationError(
            "role", "pattern", "a role name is 1-64 of a-z 0-9 _ -, starting with a letter"
        )
    if not command.permissions:
        raise ValidationError("permissions", "required", "a role needs at least one permission")
    _text("description", command.description)
    if state.role(command.role) is None and len(state.roles) >= MAX_ROLES:
        raise ValidationError("role", "too_many", f"at most {MAX_ROLES} custom roles")
    permissions = tuple(sorted(set(command.permissions)))
    current = state.role(command.role)
    if current is not None and (current.permissions, current.description) == (
        permissions,
        command.description,
    ):
        return []
    return [
        RoleDefined(role=command.role, permissions=permissions, description=command.description)
    ]


def _remove_role(command: RemoveRole, state: AccessState) -> list[AccessEvent]:
    if command.role in BUILTIN_ROLES:
        raise ValidationError(
            "role", "builtin", f"{command.role!r} is a built-in role and cannot be removed"
        )
    if state.role(command.role) is None:
        raise NotFoundError(f"no custom role {command.role!r}", role=command.role)
    _text("reason", command.reason)
    using = [g.grant_id for g in state.grants if g.role == command.role]
    if using:
        # A grant must never silently start meaning something else: withdraw first.
        raise ConflictError(
            f"role {command.role!r} is used by {len(using)} grant(s): withdraw them first",
            role=command.role,
            grants=using[:20],
        )
    return [RoleRemoved(role=command.role, reason=command.reason)]


def _give_grant(command: GiveGrant, state: AccessState) -> list[AccessEvent]:
    validate_id(command.grant_id, "grant_id")
    if state.grant(command.grant_id) is not None:
        raise ConflictError(f"grant {command.grant_id} exists already", grant_id=command.grant_id)
    if command.subject_kind is SubjectKind.PRINCIPAL and not _PRINCIPAL.fullmatch(command.subject):
        raise ValidationError(
            "principal",
            "pattern",
            "principal must be 1-128 of A-Z a-z 0-9 . _ @ + -, starting alphanumeric",
        )
    if command.subject_kind is SubjectKind.GROUP and not _GROUP.fullmatch(command.subject):
        raise ValidationError(
            "group", "pattern", "group is 1-256 characters without spaces or = ; : , |"
        )
    if command.role not in BUILTIN_ROLES and state.role(command.role) is None:
        raise ValidationError(
            "role", "unknown", f"no role {command.role!r}: define it first", role=command.role
        )
    _validate_pattern("pattern", command.pattern)
    _text("reason", command.reason)
    if len(state.grants) >= MAX_GRANTS:
        raise ValidationError("grant", "too_many", f"at most {MAX_GRANTS} grants")
    return [
        GrantGiven(
            grant_id=command.grant_id,
            subject_kind=command.subject_kind,
            subject=command.subject,
            role=command.role,
            pattern=command.pattern,
            given_by=command.actor,
            reason=command.reason,
        )
    ]


def _validate_pattern(field: str, pattern: str) -> None:
    if not _PATTERN.fullmatch(pattern):
        raise ValidationError(
            field, "pattern", f"{field} is a model name, a name prefix ending in *, or *"
        )


def _create_account(command: CreateServiceAccount, state: AccessState) -> list[AccessEvent]:
    if not _PRINCIPAL.fullmatch(command.name):
        raise ValidationError(
            "name", "pattern", "name must be 1-128 of A-Z a-z 0-9 . _ @ + -, starting alphanumeric"
        )
    if state.service_account(command.name) is not None:
        raise ConflictError(f"service account {command.name!r} exists already", name=command.name)
    if not command.roles:
        raise ValidationError("roles", "required", "a service account needs at least one role")
    for i, scope in enumerate(command.scopes):
        _validate_pattern(f"scopes[{i}]", scope)
    bound = int(LIFETIME_UPPER_BOUND.total_seconds())
    if not 60 <= command.max_lifetime_seconds <= bound:
        raise ValidationError(
            "max_lifetime_seconds",
            "range",
            f"max_lifetime_seconds is between 60 and {bound} ({LIFETIME_UPPER_BOUND.days} days)",
            max=bound,
        )
    _text("description", command.description)
    if len(state.service_accounts) >= MAX_SERVICE_ACCOUNTS:
        raise ValidationError(
            "name", "too_many", f"at most {MAX_SERVICE_ACCOUNTS} service accounts"
        )
    return [
        ServiceAccountCreated(
            name=command.name,
            roles=tuple(dict.fromkeys(command.roles)),
            scopes=command.scopes,
            max_lifetime_seconds=command.max_lifetime_seconds,
            description=command.description,
        )
    ]


def check_token_expiry(account: ServiceAccount, expires_at: datetime | None, now: datetime) -> None:
    """A service account's token must expire, no later than now + the account's maximum
    lifetime; a disabled account gets no token at all."""
    if account.disabled:
        raise ConflictError(f"service account {account.name!r} is disabled", name=account.name)
    limit = now + timedelta(seconds=account.max_lifetime_seconds)
    if expires_at is None or expires_at > limit:
        raise ValidationError(
            "expires_at",
            "max_lifetime",
            f"a token of service account {account.name!r} must expire by"
            f" {limit.isoformat()} (its maximum lifetime is"
            f" {account.max_lifetime_seconds} seconds)",
            max_lifetime_seconds=account.max_lifetime_seconds,
        )


# ------------------------------------------------------------------------------ rights


class Right(msgspec.Struct, frozen=True, kw_only=True):
    """One permission on one model pattern, and what gave it (for a 403 or an explain)."""

    permission: Permission
    pattern: str
    source: str


def matches(pattern: str, model_name: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return model_name.startswith(pattern[:-1])
    return model_name == pattern


def token_rights(
    permissions: Iterable[Permission], scopes: tuple[str, ...], source: str
) -> tuple[Right, ...]:
    """A token's (or an OIDC mapping's) permissions, each on every one of its scopes."""
    patterns = ("*",) if not scopes or "*" in scopes else scopes
    return tuple(
        Right(permission=p, pattern=s, source=source)
        for p in sorted(set(permissions))
        for s in patterns
    )


def grants_for(
    state: AccessState, principal: str, groups: Iterable[str], also: Iterable[str] = ()
) -> tuple[Grant, ...]:
    """The grants naming ``principal`` (or any of ``also``: the subject id it is recorded
    by) or one of ``groups``."""
    held = set(groups)
    names = {principal, *also}
    return tuple(
        g
        for g in state.grants
        if (g.subject_kind is SubjectKind.PRINCIPAL and g.subject in names)
        or (g.subject_kind is SubjectKind.GROUP and g.subject in held)
    )


def granted_rights(
    state: AccessState, principal: str, groups: Iterable[str], also: Iterable[str] = ()
) -> tuple[Right, ...]:
    """What the grants naming ``principal`` (or any of ``also``) or one of ``groups`` add,
    each on its own pattern only."""
    return tuple(
        Right(
            permission=p,
            pattern=g.pattern,
            source=f"grant {g.grant_id} (role {g.role} on {g.pattern})",
        )
        for g in grants_for(state, principal, groups, also)
        for p in sorted(state.permissions_of(g.role))
    )


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    allowed: bool
    decided_by: str | None  # the right that allowed; None when denied
    reason: str


def decide_access(
    rights: Iterable[Right], permission: Permission, model_name: str | None
) -> Decision:
    """Whether ``rights`` allow ``permission`` on ``model_name`` (None: registry-wide,
    which a read needs on some model, anything else on every model, ``*``)."""
    relevant = [r for r in rights if r.permission is permission]
    if not relevant:
        return Decision(allowed=False, decided_by=None, reason=f"no {permission} permission")
    if model_name is None:
        if permission is Permission.READ:
            return Decision(allowed=True, decided_by=relevant[0].source, reason="read")
        whole = next((r for r in relevant if r.pattern == "*"), None)
        if whole is None:
            return Decision(
                allowed=False,
                decided_by=None,
                reason=f"{permission} is held only on some models, not the whole registry",
            )
        return Decision(allowed=True, decided_by=whole.source, reason=f"{permission} on *")
    found = next((r for r in relevant if matches(r.pattern, model_name)), None)
    if found is None:
        return Decision(
            allowed=False,
            decided_by=None,
            reason=f"{permission} is held, but on no pattern matching model {model_name!r}",
        )
    return Decision(
        allowed=True, decided_by=found.source, reason=f"{permission} on {found.pattern}"
    )


ACCESS: Decider[AccessState, AccessCommand, AccessEvent] = Decider(
    stream_type=STREAM_TYPE,
    initial_state=initial_state,
    evolve=evolve,
    decide=decide,
    state_type=AccessState,
)
