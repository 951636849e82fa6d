"""Custom roles, grants, "who could do what at T", service accounts (``/access``,
``/service-accounts``). Every route needs ADMIN on the whole registry.

Why admin only, also for the reads: the grants and the explain answer are the map of who
holds which key to which models, and name principals and groups across every scope; the
same reason the token list and the refusals feed are admin-only. An auditor is given a
custom role holding ``admin``, or reads the events themselves with an admin's consent.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from events.access import Permission, Role, validate_principal
from events.access_grants import (
    BUILTIN_ROLES,
    DEFAULT_MAX_LIFETIME,
    AccessState,
    CreateServiceAccount,
    DefineRole,
    DisableServiceAccount,
    GiveGrant,
    Grant,
    RemoveRole,
    ServiceAccount,
    SubjectKind,
    WithdrawGrant,
)
from events.errors import ValidationError
from service.api.auth import require
from service.api.common import (
    Receipt,
    parse_as_of,
    principal_of,
    receipt,
    seed_of,
    services_of,
)
from service.api.openapi_exact import GROUP, MODEL_NAME, PRINCIPAL
from service.api.problems import BadRequestError
from service.api.schemas import Strict
from service.api.subject_names import actor_ids
from service.commands import access


class RoleRequest(Strict, frozen=True, kw_only=True):
    permissions: list[Permission]
    description: str = ""


class RoleInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    permissions: list[Permission]
    builtin: bool
    description: str = ""


class GrantRequest(Strict, frozen=True, kw_only=True):
    """Exactly one of ``principal`` and ``group``."""

    role: str
    model: str  # a model name, a prefix ending in *, or *
    principal: str | None = None
    group: str | None = None
    reason: str = ""


class GrantInfo(msgspec.Struct, frozen=True, kw_only=True):
    grant_id: str
    principal: str | None
    group: str | None
    role: str
    model: str
    permissions: list[Permission]
    given_by: str
    reason: str


class AccessView(msgspec.Struct, frozen=True, kw_only=True):
    """The roles and grants as they stood at log position ``position``."""

    position: int
    roles: list[RoleInfo]
    grants: list[GrantInfo]


class AccessCheck(msgspec.Struct, frozen=True, kw_only=True):
    principal: str
    groups: list[str]
    permission: Permission
    model: str | None
    position: int
    allowed: bool
    decided_by: str | None  # the token or grant that allowed; None when denied
    reason: str


class ServiceAccountRequest(Strict, frozen=True, kw_only=True):
    name: str
    roles: list[Role]
    scopes: list[str] = msgspec.field(default_factory=list)
    max_lifetime_seconds: int = int(DEFAULT_MAX_LIFETIME.total_seconds())
    description: str = ""


class ServiceAccountInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    roles: list[Role]
    scopes: list[str]
    max_lifetime_seconds: int
    description: str
    disabled: bool
    disabled_reason: str


def _roles(state: AccessState) -> list[RoleInfo]:
    builtin = [
        RoleInfo(name=name, permissions=sorted(perms), builtin=True)
        for name, perms in BUILTIN_ROLES.items()
    ]
    custom = [
        RoleInfo(
            name=r.name, permissions=list(r.permissions), builtin=False, description=r.description
        )
        for r in sorted(state.roles, key=lambda r: r.name)
    ]
    return builtin + custom


def _grant(state: AccessState, grant: Grant) -> GrantInfo:
    person = grant.subject_kind is SubjectKind.PRINCIPAL
    return GrantInfo(
        grant_id=grant.grant_id,
        principal=grant.subject if person else None,
        group=None if person else grant.subject,
        role=grant.role,
        model=grant.pattern,
        permissions=sorted(state.permissions_of(grant.role)),
        given_by=grant.given_by,
        reason=grant.reason,
    )


def _account(account: ServiceAccount) -> ServiceAccountInfo:
    return ServiceAccountInfo(
        name=account.name,
        roles=list(account.roles),
        scopes=list(account.scopes),
        max_lifetime_seconds=account.max_lifetime_seconds,
        description=account.description,
        disabled=account.disabled,
        disabled_reason=account.disabled_reason,
    )


class AccessController(Controller):
    path = "/access"
    tags = ["access"]

    @get("/roles")
    async def roles(self, request: Request[Any, Any, Any]) -> list[RoleInfo]:
        """The built-in roles and the custom ones."""
        require(principal_of(request), Permission.ADMIN)
        return _roles(await access.current(services_of(request).executor))

    @put("/roles/{role:str}", status_code=200)
    async def define_role(
        self, request: Request[Any, Any, Any], role: FromPath[str], data: JSONBody[RoleRequest]
    ) -> Response[Receipt]:
        """Define a custom role, or change its permissions (grants of it change at once)."""
        principal = principal_of(request)
        require(principal, Permission.ADMIN)
        services = services_of(request)
        command = DefineRole(
            actor=principal.name,
            now=datetime.now(UTC),
            role=role,
            permissions=tuple(data.permissions),
            description=data.description,
        )
        outcome = await access.run(services.executor, command, id_seed=seed_of(request))
        services.auth.tokens.forget()  # here at once; other processes on the NOTIFY
        return receipt(await services.registry.written_from("", outcome))

    @delete("/roles/{role:str}", status_code=200)
    async def remove_role(
        self, request: Request[Any, Any, Any], role: FromPath[str], reason: FromQuery[str] = ""
    ) -> Response[Receipt]:
        """Remove a custom role no grant uses (409 while one does)."""
        principal = principal_of(request)
        require(principal, Permission.ADMIN)
        services = services_of(request)
        command = RemoveRole(actor=principal.name, now=datetime.now(UTC), role=role, reason=reason)
        outcome = await access.run(services.executor, command, id_seed=seed_of(request))
        services.auth.tokens.forget()
        return receipt(await services.registry.written_from("", outcome))

    @get("/grants")
    async def grants(
        self,
        request: Request[Any, Any, Any],
        as_of: Annotated[
            str | None,
            QueryParameter(description="A log position or an RFC 3339 time: the grants then"),
        ] = None,
    ) -> AccessView:
        """The roles and grants now, or as they stood at a past position or time."""
        require(principal_of(request), Permission.ADMIN)
        moment = None if as_of is None else parse_as_of(as_of)
        at = await access.access_at(services_of(request).pool, moment)
        return AccessView(
            position=at.position,
            roles=_roles(at.access),
            grants=[_grant(at.access, g) for g in at.access.grants],
        )

    @post("/grants", status_code=201)
    async def give(
        self, request: Request[Any, Any, Any], data: JSONBody[GrantRequest]
    ) -> Response[Receipt]:
        """Grant a role to a principal or a group on a model pattern; effective at once."""
        principal = principal_of(request)
        require(principal, Permission.ADMIN)
        if (data.principal is None) == (data.group is None):
            raise ValidationError("principal", "one_of", "name exactly one of principal and group")
        services = services_of(request)
        grant_id = services.registry.request_id_for(seed_of(request))
        subject = data.group or ""
        if data.principal is not None:
            # A person is recorded by subject id, as in every event, so erasure reaches it.
            subject = validate_principal(data.principal)
            if services.executor.subjects is not None:
                subject = await services.executor.subjects.subject_for(subject)
        command = GiveGrant(
            actor=principal.name,
            now=datetime.now(UTC),
            grant_id=grant_id,
            subject_kind=SubjectKind.GROUP if data.principal is None else SubjectKind.PRINCIPAL,
            subject=subject,
            role=data.role,
            pattern=data.model,
            reason=data.reason,
        )
        outcome = await access.run(services.executor, command, id_seed=seed_of(request))
        services.auth.tokens.forget()
        return receipt(
            await services.registry.written_from("", outcome), request_id=grant_id, status=201
        )

    @delete("/grants/{grant_id:str}", status_code=200)
    async def withdraw(
        self,
        request: Request[Any, Any, Any],
        grant_id: FromPath[str],
        reason: FromQuery[str] = "",
    ) -> Response[Receipt]:
        """Withdraw a grant; the next request of its holder no longer has it."""
        principal = principal_of(request)
        require(principal, Permission.ADMIN)
        services = services_of(request)
        command = WithdrawGrant(
            actor=principal.name, now=datetime.now(UTC), grant_id=grant_id, reason=reason
        )
        outcome = await access.run(services.executor, command, id_seed=seed_of(request))
        services.auth.tokens.forget()
        return receipt(await services.registry.written_from("", outcome))

    @get("/check")
    async def check(
        self,
        request: Request[Any, Any, Any],
        principal: Annotated[str, QueryParameter(pattern=PRINCIPAL, description="Who")],
        permission: Annotated[Permission, QueryParameter(description="What")],
        model: Annotated[
            str | None,
            QueryParameter(pattern=MODEL_NAME, description="On which model (none: registry)"),
        ] = None,
        group: Annotated[
            list[str] | None,
            QueryParameter(description="The principal's identity-provider groups (repeat)"),
        ] = None,
        as_of: Annotated[
            str | None,
            QueryParameter(description="A log position or an RFC 3339 time (default: now)"),
        ] = None,
    ) -> AccessCheck:
        """Could ``principal`` do ``permission`` on ``model`` (at ``as_of``)? The answer
        names the token or grant that allowed it, or why it is denied. It counts the
        principal's tokens and the grants naming it or its groups; an identity provider's
        group mapping (configuration, not events) is not part of the past."""
        require(principal_of(request), Permission.ADMIN)
        for field, value, pattern in (
            ("principal", principal, PRINCIPAL),
            ("model", model, MODEL_NAME),
        ):
            if value is not None and re.fullmatch(pattern, value) is None:
                raise BadRequestError(field, "pattern", f"{field} {value!r} is not a valid name")
        groups = list(group or [])
        if len(groups) > 100 or any(re.fullmatch(GROUP, g) is None for g in groups):
            raise BadRequestError(
                "group", "pattern", "at most 100 groups, each without spaces or = ; : , |"
            )
        moment = None if as_of is None else parse_as_of(as_of)
        services = services_of(request)
        at = await access.access_at(services.pool, moment)
        # Tokens issued since subjects exist name their principal by subject id.
        recorded_as = await actor_ids(services, principal) or ()
        decision = access.explain(at, principal, groups, permission, model, recorded_as)
        return AccessCheck(
            principal=principal,
            groups=groups,
            permission=permission,
            model=model,
            position=at.position,
            allowed=decision.allowed,
            decided_by=decision.decided_by,
            reason=decision.reason,
        )


class ServiceAccountsController(Controller):
    path = "/service-accounts"
    tags = ["access"]

    @get("/")
    async def list_accounts(self, request: Request[Any, Any, Any]) -> list[ServiceAccountInfo]:
        require(principal_of(request), Permission.ADMIN)
        state = await access.current(services_of(request).executor)
        return [_account(a) for a in state.service_accounts]

    @post("/", status_code=201)
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[ServiceAccountRequest]
    ) -> Response[Receipt]:
        """Create a service account: the roles and scopes its tokens carry, and the longest
        a token of it may live (default 90 days, at most 365)."""
        principal = principal_of(request)
        require(principal, Permission.ADMIN)
        services = services_of(request)
        command = CreateServiceAccount(
            actor=principal.name,
            now=datetime.now(UTC),
            name=data.name,
            roles=tuple(data.roles),
            scopes=tuple(data.scopes),
            max_lifetime_seconds=data.max_lifetime_seconds,
            description=data.description,
        )
        outcome = await access.run(services.executor, command, id_seed=seed_of(request))
        services.auth.tokens.forget()
        return receipt(await services.registry.written_from("", outcome), status=201)

    @post("/{name:str}/disable", status_code=200)
    async def disable(
        self, request: Request[Any, Any, Any], name: FromPath[str], reason: FromQuery[str] = ""
    ) -> Response[Receipt]:
        """Disable a service account: every token of it is refused (401) from now on."""
        principal = principal_of(request)
        require(principal, Permission.ADMIN)
        services = services_of(request)
        command = DisableServiceAccount(
            actor=principal.name, now=datetime.now(UTC), name=name, reason=reason
        )
        outcome = await access.run(services.executor, command, id_seed=seed_of(request))
        services.auth.tokens.forget()
        return receipt(await services.registry.written_from("", outcome))
