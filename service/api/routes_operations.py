"""Deployments, the audit feed (history, global log, verification, event schemas), tokens,
``/me``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, cast

import asyncpg
import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from eventlog.keys import model_ids_named
from eventlog.log import read_log_as_stored
from eventlog.verify import VerifyReport, verify
from events.access import TOKENS, Permission, Role
from events.access_grants import check_token_expiry
from events.catalogue import CODEC
from events.errors import NotFoundError, ValidationError
from events.model.commands import (
    ReportDeploymentFailed,
    ReportDeploymentRolledBack,
    ReportDeploymentSucceeded,
    StartDeployment,
)
from events.policy import GovernancePolicy
from events.streams import TOKEN_TYPE, token_stream
from projections.views import audit_timeline, deployments
from projections.views.audit_timeline import AuditPage
from projections.views.deployments import Place, Run
from service.api.auth import require
from service.api.common import (
    MAX_POSITION,
    MAX_VERSION,
    MIN_VERSION,
    Receipt,
    VersionNumber,
    if_match,
    principal_of,
    read_views,
    receipt,
    representable_time,
    seed_of,
    services_of,
)
from service.api.routes_models import AsOf, MinPosition
from service.api.schemas import (
    DeploymentReport,
    DeploymentStart,
    IssuedToken,
    TokenInfo,
    TokenRequest,
)
from service.api.subject_names import actor_ids
from service.artifacts.audit import AuditReport, audit_blobs, read_ledger
from service.artifacts.inventory import inventory_of
from service.commands import access
from service.commands.executor import CommandExecutor
from service.commands.tokens import Principal, covers, issue_token, revoke_token
from service.publication.event_schema import catalogue_schema

DEPLOYMENTS = [deployments.PROJECTION]


async def _service_account_terms(
    executor: CommandExecutor, data: TokenRequest
) -> tuple[str, list[Role], list[str]]:
    """The principal, roles and scopes of the token asked for. A token whose principal is
    a service account (named by ``service_account`` or as ``principal``) carries the
    account's roles and scopes and must expire within its maximum lifetime."""
    name = data.service_account or data.principal
    state = await access.current(executor)
    account = state.service_account(name)
    if account is None:
        if data.service_account is not None:
            raise NotFoundError(f"no service account {name!r}", name=name)
        return data.principal, data.roles, data.scopes
    if data.principal not in ("", account.name):
        raise ValidationError(
            "principal", "service_account", "a service account's token is issued to the account"
        )
    for field, asked, held in (
        ("roles", set(data.roles), set(account.roles)),
        ("scopes", set(data.scopes), set(account.scopes)),
    ):
        if asked and asked != held:
            raise ValidationError(
                field,
                "service_account",
                f"a token of service account {account.name!r} carries the account's {field}",
            )
    check_token_expiry(account, data.expires_at, datetime.now(UTC))
    return account.name, list(account.roles), list(account.scopes)


AUDIT = [audit_timeline.PROJECTION]


class DeploymentsController(Controller):
    path = "/models/{name:str}"
    tags = ["deployments"]

    @post("/versions/{version:int}/deployments", status_code=201)
    async def start(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        version: VersionNumber,
        data: JSONBody[DeploymentStart],
    ) -> Response[Receipt]:
        """A deployment system reports that it started deploying a version somewhere."""
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        registry = services_of(request).registry
        model_id = await registry.model_id(name)
        deployment_id = data.deployment_id or registry.request_id_for(seed_of(request))
        now = registry.now()

        def build(registry_policy: GovernancePolicy) -> StartDeployment:
            # Judged against the policy in force (its environments), held by the guard.
            return StartDeployment(
                actor=principal.name,
                now=now,
                deployment_id=deployment_id,
                version=version,
                environment=data.environment,
                target=data.target,
                desired_stage=data.desired_stage,
                desired_alias=data.desired_alias,
                comment=data.comment,
                registry_policy=registry_policy,
            )

        written = await registry.under_registry_policy(
            model_id, build, if_version=if_match(request), id_seed=seed_of(request)
        )
        return receipt(written, model=name, version=version, request_id=deployment_id, status=201)

    @post("/deployments/report", status_code=200)
    async def report(
        self, request: Request[Any, Any, Any], name: FromPath[str], data: JSONBody[DeploymentReport]
    ) -> Response[Receipt]:
        """How a deployment ended: succeeded, failed or rolled back."""
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        registry = services_of(request).registry
        model_id = await registry.model_id(name)
        now = registry.now()
        command: Any
        if data.status == "succeeded":
            command = ReportDeploymentSucceeded(
                actor=principal.name,
                now=now,
                deployment_id=data.deployment_id,
                comment=data.comment,
            )
        elif data.status == "failed":
            command = ReportDeploymentFailed(
                actor=principal.name, now=now, deployment_id=data.deployment_id, reason=data.reason
            )
        else:
            command = ReportDeploymentRolledBack(
                actor=principal.name, now=now, deployment_id=data.deployment_id, reason=data.reason
            )
        written = await registry.execute(
            model_id, command, if_version=if_match(request), id_seed=seed_of(request)
        )
        return receipt(written, model=name, request_id=data.deployment_id)

    @get("/deployments")
    async def places(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        environment: FromQuery[str | None] = None,
        drifted: FromQuery[bool] = False,
        as_of: AsOf = None,
        min_position: MinPosition = None,
    ) -> list[Place]:
        """Desired (stage/alias) against actual (the live deployment) per environment and target."""
        require(principal_of(request), Permission.READ, name)
        services = services_of(request)
        model_id, _ = await services.registry.locate(name)
        async with read_views(
            services, DEPLOYMENTS, as_of=as_of, min_position=min_position, model_id=model_id
        ) as reader:
            return await deployments.places(
                reader.conn, reader.names, model_id, environment=environment, drifted_only=drifted
            )

    @get("/deployments/runs")
    async def runs(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        environment: FromQuery[str | None] = None,
        before_position: Annotated[int | None, QueryParameter(ge=0, le=MAX_POSITION)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        min_position: MinPosition = None,
    ) -> list[Run]:
        require(principal_of(request), Permission.READ, name)
        services = services_of(request)
        model_id, _ = await services.registry.locate(name)
        async with read_views(
            services, DEPLOYMENTS, as_of=None, min_position=min_position, model_id=model_id
        ) as reader:
            return await deployments.runs(
                reader.conn,
                reader.names,
                model_id,
                environment=environment,
                before_position=before_position,
                limit=limit,
            )


class LoggedEventView(msgspec.Struct, frozen=True, kw_only=True):
    log_position: int
    sealed_at: datetime
    envelope: msgspec.Raw  # exactly the stored, hashed bytes


class EventsPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of the log. ``next_after`` is where the next page starts (None: the end of the
    log was reached); filtered by model and type, a page may hold fewer items than the limit,
    even none, and still have a next one."""

    items: list[LoggedEventView]
    next_after: int | None


class AuditController(Controller):
    path = "/"
    tags = ["audit"]

    @get("/models/{name:str}/history")
    async def history(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        actor: FromQuery[str | None] = None,
        type: Annotated[
            list[str] | None, QueryParameter(description="Event types to include")
        ] = None,
        version: Annotated[int | None, QueryParameter(ge=MIN_VERSION, le=MAX_VERSION)] = None,
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
        cursor: Annotated[int | None, QueryParameter(ge=0, le=MAX_POSITION)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        oldest_first: FromQuery[bool] = False,
        as_of: AsOf = None,
        min_position: MinPosition = None,
    ) -> AuditPage:
        """Every event of a model: who did what, when and why."""
        require(principal_of(request), Permission.READ, name)
        services = services_of(request)
        model_id, _ = await services.registry.locate(name)
        up_to = await _up_to(services.pool, as_of)
        async with read_views(
            services, AUDIT, as_of=None, min_position=min_position, model_id=model_id
        ) as reader:
            return await audit_timeline.entries(
                reader.conn,
                reader.names,
                model_id=model_id,
                actor=await actor_ids(services, actor),
                event_types=type,
                version=version,
                since=since and representable_time(since, "since"),
                until=until and representable_time(until, "until"),
                up_to_position=up_to,
                cursor=cursor,
                newest_first=not oldest_first,
                limit=limit,
            )

    @get("/audit/actors/{actor:str}")
    async def by_actor(
        self,
        request: Request[Any, Any, Any],
        actor: FromPath[str],
        type: Annotated[
            list[str] | None, QueryParameter(description="Event types to include")
        ] = None,
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
        cursor: Annotated[int | None, QueryParameter(ge=0, le=MAX_POSITION)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        as_of: AsOf = None,
        min_position: MinPosition = None,
    ) -> AuditPage:
        """Everything one person (or system) did, newest first, within the caller's scope:
        a scoped token sees the events of its models only, and token events are for admins.
        ``since``/``until`` bound the business time, ``as_of`` the log position, as for a
        model's history."""
        principal = principal_of(request)
        require(principal, Permission.READ)
        services = services_of(request)
        only_models = await _models_in_scope(services.pool, principal)
        hide_tokens = not (Permission.ADMIN in principal.permissions and covers(principal, None))
        up_to = await _up_to(services.pool, as_of)
        async with read_views(services, AUDIT, as_of=None, min_position=min_position) as reader:
            return await audit_timeline.entries(
                reader.conn,
                reader.names,
                only_models=only_models,
                hide_tokens=hide_tokens,
                actor=await actor_ids(services, actor),
                event_types=type,
                since=since and representable_time(since, "since"),
                until=until and representable_time(until, "until"),
                up_to_position=up_to,
                cursor=cursor,
                limit=limit,
            )

    @get("/events")
    async def events(
        self,
        request: Request[Any, Any, Any],
        after: Annotated[int, QueryParameter(ge=0, le=MAX_POSITION)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=5000)] = 500,
        type: FromQuery[list[str] | None] = None,
        model: FromQuery[str | None] = None,
    ) -> EventsPage:
        """The global log after a position, as stored (for auditors and replays)."""
        principal = principal_of(request)
        require(principal, Permission.READ)
        services = services_of(request)
        model_id = None
        if model is not None:
            require(principal, Permission.READ, model)
            model_id, _ = await services.registry.locate(model)
        elif principal.scopes:
            require(principal, Permission.ADMIN)  # the whole log crosses every scope
        found = await read_log_as_stored(
            services.pool,
            after,
            limit,
            model_id=model_id,
            types=frozenset(type) if type and model_id is None else None,
        )
        # A full read means there may be more, whether or not the type filter kept its last event.
        next_after = found[-1][0].log_position if len(found) == limit else None
        if type and model_id is not None:
            found = [(e, raw) for e, raw in found if e.event_type in type]
        items = [
            LoggedEventView(
                log_position=e.log_position, sealed_at=e.sealed_at, envelope=msgspec.Raw(raw)
            )
            for e, raw in found
        ]
        return EventsPage(items=items, next_after=next_after)

    @get("/audit/verify")
    async def verify_chains(self, request: Request[Any, Any, Any]) -> VerifyReport:
        """Recompute both hash chains; name the first break, if any."""
        require(principal_of(request), Permission.READ)
        async with services_of(request).pool.acquire() as conn:
            return await verify(cast(asyncpg.Connection, conn))

    @get("/audit/artifacts")
    async def audit_artifacts(
        self,
        request: Request[Any, Any, Any],
        sample: Annotated[
            int | None,
            QueryParameter(ge=1, le=10_000_000, description="Re-hash this many blobs at random"),
        ] = None,
    ) -> AuditReport:
        """Re-hash the stored model files (or a sample): missing, corrupt and orphaned
        blobs, with the versions naming them (docs/artifacts.md). Registry-wide, so ADMIN;
        it deletes nothing (garbage collection is ``modelreg audit artifacts --gc``)."""
        require(principal_of(request), Permission.ADMIN)
        services = services_of(request)
        ledger = await read_ledger(services.store, services.executor)
        return await audit_blobs(
            ledger,
            services.blobs,
            inventory_of(services.blobs),
            now=services.registry.now(),
            sample=sample,
        )

    @get("/events/schema")
    async def schema(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """JSON Schema (2020-12) of every event payload, generated from the event types."""
        require(principal_of(request), Permission.READ)
        return catalogue_schema(CODEC)


async def _up_to(pool: asyncpg.Pool, as_of: str | None) -> int | None:
    """The log position ``as_of`` (a position or a time) stands for; None: the head."""
    if as_of is None:
        return None
    from projections.time_travel import resolve_as_of
    from service.api.common import parse_as_of

    return await resolve_as_of(pool, parse_as_of(as_of))


async def _models_in_scope(pool: asyncpg.Pool, principal: Principal) -> list[str] | None:
    """The ids of the models a scoped principal covers (None: it covers the registry)."""
    if covers(principal, None):
        return None
    exact = [s for s in principal.scopes if not s.endswith("*")]
    prefixes = [s[:-1] for s in principal.scopes if s.endswith("*")]
    return await model_ids_named(pool, exact, prefixes)


class TokensController(Controller):
    path = "/"
    tags = ["tokens"]

    @post("/tokens", status_code=201)
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[TokenRequest]
    ) -> IssuedToken:
        """Issue a token; its secret is in this response only."""
        principal = principal_of(request)
        require(principal, Permission.ADMIN)
        services = services_of(request)
        seed = seed_of(request)
        token_id = services.registry.request_id_for(seed)
        secret: str | None = None
        if seed is not None and await services.store.stream_version(token_stream(token_id)) > 0:
            # A retry of an answered request (the idempotency middleware matched key and body).
            _, state = await services.executor.state_of(token_stream(token_id), TOKENS)
        else:
            holder, roles, scopes = await _service_account_terms(services.executor, data)
            outcome, secret = await issue_token(
                services.executor,
                services.pepper,
                actor=principal.name,
                principal=holder,
                roles=roles,
                scopes=scopes,
                expires_at=data.expires_at,
                description=data.description,
                id_seed=seed,
                token_id=token_id,
            )
            state = outcome.state
            secret = None if outcome.replayed else secret
            # Answer once sealed, like every other write: a read of the log that follows
            # (GET /events, an audit feed) then shows the token's issue.
            await services.registry.written_from("", outcome)
        return IssuedToken(
            token_id=state.token_id,
            principal=state.principal,
            roles=list(state.roles),
            scopes=list(state.scopes),
            expires_at=state.expires_at,
            secret=secret,
            note="a retry: the secret was shown in the first response only"
            if secret is None
            else "the secret is shown once; store it now",
        )

    @get("/tokens")
    async def list_tokens(self, request: Request[Any, Any, Any]) -> list[TokenInfo]:
        require(principal_of(request), Permission.ADMIN)
        services = services_of(request)
        found = []
        for stream_id in await services.store.stream_ids(TOKEN_TYPE):
            _, state = await services.executor.state_of(stream_id, TOKENS)
            found.append(
                TokenInfo(
                    token_id=state.token_id,
                    principal=state.principal,
                    roles=list(state.roles),
                    scopes=list(state.scopes),
                    expires_at=state.expires_at,
                    revoked=state.revoked,
                    description=state.description,
                )
            )
        return found

    @delete("/tokens/{token_id:str}", status_code=200)
    async def revoke(
        self, request: Request[Any, Any, Any], token_id: FromPath[str], reason: FromQuery[str] = ""
    ) -> Response[Receipt]:
        principal = principal_of(request)
        require(principal, Permission.ADMIN)
        services = services_of(request)
        stream = token_stream(token_id)
        if await services.store.stream_version(stream) == 0:
            raise NotFoundError(f"no token {token_id!r}", token_id=token_id)
        outcome = await revoke_token(
            services.executor, token_id, actor=principal.name, reason=reason
        )
        # Refused here from now on, without waiting for the NOTIFY (other processes get it).
        services.auth.tokens.forget()
        return receipt(await services.registry.written_from("", outcome))

    @get("/me")
    async def me(self, request: Request[Any, Any, Any]) -> Principal:
        """Who the presented token belongs to, and what it may do."""
        return principal_of(request)
