"""Stages, rollback, aliases, policies and promotion requests: the governed moves."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.params import FromPath, JSONBody, QueryParameter

from eventlog.keys import model_names
from events.access import Permission
from events.errors import NotFoundError
from events.model.commands import (
    ApprovePromotion,
    CancelPromotion,
    ClearModelPolicy,
    Metrics,
    RejectPromotion,
    RemoveAlias,
    RequestPromotion,
    RestoreVersion,
    Rollback,
    SetAlias,
    SetModelPolicy,
)
from events.model.decider import MODEL
from events.model.registration import require_stages_kept
from events.model.state import ModelState
from events.names import PLACE_NAME_MAX
from events.policy import GovernancePolicy, validate_policy
from events.stages import Stage, StageDefinition, placement
from events.streams import model_stream
from projections.views import approvals, model_versions, stage_timeline
from projections.views.approvals import ApprovalRequest
from projections.views.stage_timeline import AliasInterval, StageInterval
from service.api.auth import require
from service.api.common import (
    Receipt,
    VersionNumber,
    etag,
    if_match,
    parse_as_of,
    principal_of,
    read_views,
    receipt,
    seed_of,
    services_of,
)
from service.api.routes_models import AsOf, MinPosition
from service.api.schemas import (
    AliasTarget,
    Decision,
    PolicyUpdate,
    PromotionRequest,
    RollbackRequest,
    StageChange,
    StageNameQuery,
)
from service.api.services import Services
from service.api.subject_names import actor_ids
from service.commands.tokens import covers

TIMELINE = [stage_timeline.PROJECTION]
APPROVALS = [approvals.PROJECTION]


class PolicyView(msgspec.Struct, frozen=True, kw_only=True):
    """The policy in force and where it comes from (``model`` or ``registry``), with its
    lifecycle spelled out (``stages`` in order and ``initial_stage``) even where the policy
    leaves them to the default."""

    source: Literal["model", "registry"]
    policy: GovernancePolicy
    stages: tuple[StageDefinition, ...]
    initial_stage: str


def policy_view(source: Literal["model", "registry"], policy: GovernancePolicy) -> PolicyView:
    return PolicyView(
        source=source,
        policy=policy,
        stages=policy.stage_definitions(),
        initial_stage=policy.initial(),
    )


async def _refuse_stranding(services: Services, policy: GovernancePolicy) -> None:
    """Refuse a registry policy that would leave a version of a model following it in a
    stage it does not define. The versions view (brought up to the log's head) names the
    candidates; each model's own stream decides (a model with its own policy is not
    concerned). A version moved into a dropped stage between this check and the append can
    still be brought back by an admin restore, which accepts a stage the policy dropped."""
    async with read_views(
        services, [model_versions.PROJECTION], as_of=None, min_position=None, latest=True
    ) as reader:
        rows = await reader.conn.fetch(
            f"SELECT DISTINCT model_id FROM {reader.names.model_versions}"
            " WHERE NOT (stage = ANY($1::text[])) OR cardinality(environments) > 0 ORDER BY model_id",
            list(policy.stage_names()),
        )
    for row in rows:
        _, state = await services.registry.executor.state_of(model_stream(row["model_id"]), MODEL)
        if state.policy is None:
            require_stages_kept(state, policy, "policy.stages")


async def _stages_of(services: Services, name: str) -> list[str]:
    """The stages a model's policy defines now (and each stage@environment of those with
    environments), then the default four (history may hold them)."""
    _, _, state = await services.registry.model(name)
    policy = state.effective_policy(await services.registry.registry_policy())
    placed = [
        placement(d.name, e) for d in policy.stage_definitions() for e in d.environment_names()
    ]
    return list(dict.fromkeys([*policy.stage_names(), *placed, *(str(s) for s in Stage)]))


class LifecycleController(Controller):
    path = "/models/{name:str}"
    tags = ["lifecycle"]

    @post("/versions/{version:int}/stage", status_code=200)
    async def stage(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        version: VersionNumber,
        data: JSONBody[StageChange],
    ) -> Response[Receipt]:
        """Move a version: 200 when done, 202 with a promotion request when the policy needs approval."""
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        registry = services_of(request).registry
        written, request_id = await registry.transition(
            name,
            version,
            data.to,
            actor=principal.name,
            comment=data.comment,
            if_version=if_match(request),
            id_seed=seed_of(request),
            environment=data.environment,
        )
        pending = request_id is not None and not any(
            e.event_type == "model.promotion_executed" for e in written.events
        )
        return receipt(
            written,
            model=name,
            version=version,
            request_id=request_id,
            status=202 if pending else 200,
        )

    @post("/rollback", status_code=200)
    async def rollback(
        self, request: Request[Any, Any, Any], name: FromPath[str], data: JSONBody[RollbackRequest]
    ) -> Response[Receipt]:
        """Re-promote the version that was in production before the current one."""
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        registry = services_of(request).registry

        def build(
            _model_id: str, _state: ModelState, policy: GovernancePolicy, _metrics: Metrics
        ) -> Rollback:
            return Rollback(
                actor=principal.name, now=registry.now(), registry_policy=policy, reason=data.reason
            )

        written = await registry.governed(
            name, build, if_version=if_match(request), id_seed=seed_of(request)
        )
        return receipt(written, model=name)

    @post("/versions/{version:int}/restore", status_code=200)
    async def restore_version(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        version: VersionNumber,
        data: JSONBody[RollbackRequest],
    ) -> Response[Receipt]:
        """Bring an archived version (in a terminal stage, or in one its policy no longer
        defines) back to the policy's initial stage. Admin only."""
        principal = principal_of(request)
        require(principal, Permission.ADMIN, name)
        registry = services_of(request).registry

        def build(
            _model_id: str, _state: ModelState, policy: GovernancePolicy, _metrics: Metrics
        ) -> RestoreVersion:
            return RestoreVersion(
                actor=principal.name,
                now=registry.now(),
                registry_policy=policy,
                version=version,
                reason=data.reason,
                actor_is_admin=True,
            )

        written = await registry.governed(
            name,
            build,
            metric_versions=lambda _state: [],
            if_version=if_match(request),
            id_seed=seed_of(request),
        )
        return receipt(written, model=name, version=version)

    @put("/aliases/{alias:str}")
    async def set_alias(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        alias: FromPath[str],
        data: JSONBody[AliasTarget],
    ) -> Response[Receipt]:
        """Point an alias at a version (a protected alias moves only through an approved promotion)."""
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        registry = services_of(request).registry

        def build(
            _model_id: str, _state: ModelState, policy: GovernancePolicy, _metrics: Metrics
        ) -> SetAlias:
            return SetAlias(
                actor=principal.name,
                now=registry.now(),
                registry_policy=policy,
                alias=alias,
                version=data.version,
                comment=data.comment,
            )

        written = await registry.governed(
            name, build, if_version=if_match(request), id_seed=seed_of(request)
        )
        return receipt(written, model=name, version=data.version)

    @delete("/aliases/{alias:str}", status_code=200)
    async def remove_alias(
        self, request: Request[Any, Any, Any], name: FromPath[str], alias: FromPath[str]
    ) -> Response[Receipt]:
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        registry = services_of(request).registry

        def build(
            _model_id: str, _state: ModelState, policy: GovernancePolicy, _metrics: Metrics
        ) -> RemoveAlias:
            return RemoveAlias(
                actor=principal.name, now=registry.now(), registry_policy=policy, alias=alias
            )

        written = await registry.governed(
            name, build, if_version=if_match(request), id_seed=seed_of(request)
        )
        return receipt(written, model=name)

    @get("/aliases/{alias:str}")
    async def alias_history(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        alias: FromPath[str],
        as_of: AsOf = None,
        min_position: MinPosition = None,
    ) -> list[AliasInterval]:
        """Every version the alias pointed at, from when to when (the last is current, if open)."""
        require(principal_of(request), Permission.READ, name)
        services = services_of(request)
        model_id, _ = await services.registry.locate(name)
        async with read_views(
            services, TIMELINE, as_of=as_of, min_position=min_position, model_id=model_id
        ) as reader:
            found = await stage_timeline.alias_timeline(
                reader.conn, reader.names, model_id, alias=alias
            )
        if not found:
            raise NotFoundError(f"model {name!r} never had an alias {alias!r}", alias=alias)
        return found

    @get("/timeline")
    async def timeline(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        stage: Annotated[
            list[StageNameQuery] | None,
            QueryParameter(description="Only these stages (repeat the parameter for several)"),
        ] = None,
        at: Annotated[
            str | None,
            QueryParameter(
                description="RFC 3339 business time or log position: who held the stage then"
            ),
        ] = None,
        environment: Annotated[
            str | None,
            QueryParameter(
                description="Only this environment of the stages: their stage@environment intervals",
                max_length=PLACE_NAME_MAX,
            ),
        ] = None,
        min_position: MinPosition = None,
    ) -> list[StageInterval]:
        """Which version held each stage (of ``stage``, if given) from when to when; with
        ``at``, the holders then. A stage with environments also has one interval per
        environment, named ``stage@environment`` (``production@eu``)."""
        require(principal_of(request), Permission.READ, name)
        services = services_of(request)
        model_id, _ = await services.registry.locate(name)
        if environment is not None:
            named = stage or [s for s in await _stages_of(services, name) if "@" not in s]
            stage = [placement(s, environment) for s in named]
        # A read about one model: it waits for the views to show the model's latest event,
        # as every other (a promotion approved by someone else shows in the timeline).
        async with read_views(
            services, TIMELINE, as_of=None, min_position=min_position, model_id=model_id
        ) as reader:
            if at is not None:
                moment = parse_as_of(at, "at")
                stages = stage or await _stages_of(services, name)
                held: list[StageInterval] = []
                for s in stages:
                    held.extend(
                        await stage_timeline.holders_at(
                            reader.conn, reader.names, s, moment, model_id=model_id
                        )
                    )
                return held
            return await stage_timeline.timeline(reader.conn, reader.names, model_id, stage=stage)

    @get("/policy")
    async def read_policy(
        self, request: Request[Any, Any, Any], name: FromPath[str]
    ) -> Response[PolicyView]:
        require(principal_of(request), Permission.READ, name)
        registry = services_of(request).registry
        _, version, state = await registry.model(name)
        view = (
            policy_view("model", state.policy)
            if state.policy is not None
            else policy_view("registry", await registry.registry_policy())
        )
        return Response(view, headers={"ETag": etag(version)})

    @put("/policy")
    async def set_policy(
        self, request: Request[Any, Any, Any], name: FromPath[str], data: JSONBody[PolicyUpdate]
    ) -> Response[Receipt]:
        principal = principal_of(request)
        require(principal, Permission.ADMIN, name)
        registry = services_of(request).registry
        model_id = await registry.model_id(name)
        command = SetModelPolicy(
            actor=principal.name,
            now=registry.now(),
            policy=data.policy.to_policy(),
            comment=data.comment,
        )
        return receipt(
            await registry.execute(model_id, command, if_version=if_match(request)), model=name
        )

    @delete("/policy", status_code=200)
    async def clear_policy(
        self, request: Request[Any, Any, Any], name: FromPath[str]
    ) -> Response[Receipt]:
        """Drop the model's own policy: the registry default applies again."""
        principal = principal_of(request)
        require(principal, Permission.ADMIN, name)
        registry = services_of(request).registry
        model_id = await registry.model_id(name)
        now = registry.now()
        written = await registry.under_registry_policy(
            model_id,
            lambda policy: ClearModelPolicy(actor=principal.name, now=now, registry_policy=policy),
            if_version=if_match(request),
        )
        return receipt(written, model=name)

    @get("/promotions")
    async def model_promotions(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        which: Annotated[Literal["open", "decided"], QueryParameter(name="state")] = "open",
        as_of: AsOf = None,
        min_position: MinPosition = None,
    ) -> list[ApprovalRequest]:
        require(principal_of(request), Permission.READ, name)
        services = services_of(request)
        model_id, _ = await services.registry.locate(name)
        async with read_views(
            services, APPROVALS, as_of=as_of, min_position=min_position, model_id=model_id
        ) as reader:
            if which == "open":
                return await approvals.open_requests(reader.conn, reader.names, model_id)
            return await approvals.decided(reader.conn, reader.names, model_id)

    @post("/promotions", status_code=202)
    async def request_promotion(
        self, request: Request[Any, Any, Any], name: FromPath[str], data: JSONBody[PromotionRequest]
    ) -> Response[Receipt]:
        """Ask for a stage and/or alias for a version; executes at once if no approval is needed."""
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        registry = services_of(request).registry
        request_id = registry.request_id_for(seed_of(request))

        def build(
            _model_id: str, _state: ModelState, policy: GovernancePolicy, metrics: Metrics
        ) -> RequestPromotion:
            return RequestPromotion(
                actor=principal.name,
                now=registry.now(),
                registry_policy=policy,
                request_id=request_id,
                version=data.version,
                justification=data.justification,
                target_stage=data.target_stage,
                alias=data.alias,
                rollback=data.rollback,
                metrics=metrics,
                environment=data.environment,
            )

        written = await registry.governed(
            name,
            build,
            metric_versions=lambda s: [data.version, s.champion(data.environment)],
            if_version=if_match(request),
            id_seed=seed_of(request),
        )
        executed = any(e.event_type == "model.promotion_executed" for e in written.events)
        return receipt(
            written,
            model=name,
            version=data.version,
            request_id=request_id,
            status=200 if executed else 202,
        )


class PromotionsController(Controller):
    path = "/promotions"
    tags = ["promotions"]

    @get("/")
    async def list_requests(
        self,
        request: Request[Any, Any, Any],
        which: Annotated[Literal["open", "decided", "mine"], QueryParameter(name="state")] = "open",
        min_position: MinPosition = None,
    ) -> list[ApprovalRequest]:
        """Open requests (``state=open``), decided ones, or those awaiting the caller (``mine``),
        as of everything recorded when the call came: an approver's inbox is never stale."""
        principal = principal_of(request)
        require(principal, Permission.READ)
        me = await actor_ids(services_of(request), principal.name) or (principal.name,)
        async with read_views(
            services_of(request), APPROVALS, as_of=None, min_position=min_position, latest=True
        ) as reader:
            if which == "mine":
                found = await approvals.awaiting(reader.conn, reader.names, me)
            elif which == "open":
                found = await approvals.open_requests(reader.conn, reader.names)
            else:
                found = await approvals.decided(reader.conn, reader.names)
        return await _visible(request, found)

    @get("/{request_id:str}")
    async def read_request(
        self,
        request: Request[Any, Any, Any],
        request_id: FromPath[str],
        min_position: MinPosition = None,
    ) -> ApprovalRequest:
        require(principal_of(request), Permission.READ)
        async with read_views(
            services_of(request), APPROVALS, as_of=None, min_position=min_position, latest=True
        ) as reader:
            found = await approvals.request(reader.conn, reader.names, request_id)
        visible = await _visible(request, [found] if found else [])
        if not visible:
            raise NotFoundError(f"no promotion request {request_id!r}", request_id=request_id)
        return visible[0]

    @post("/{request_id:str}/approve", status_code=200)
    async def approve(
        self, request: Request[Any, Any, Any], request_id: FromPath[str], data: JSONBody[Decision]
    ) -> Response[Receipt]:
        """Approve; the approval that satisfies the policy executes the promotion."""
        principal = principal_of(request)
        name, version = await _locate_request(request, request_id)
        require(principal, Permission.APPROVE, name)
        registry = services_of(request).registry

        def build(
            _model_id: str, _state: ModelState, policy: GovernancePolicy, metrics: Metrics
        ) -> ApprovePromotion:
            return ApprovePromotion(
                actor=principal.name,
                now=registry.now(),
                registry_policy=policy,
                request_id=request_id,
                comment=data.comment,
                metrics=metrics,
            )

        written = await registry.governed(
            name,
            build,
            metric_versions=lambda s: [version, s.production],
            if_version=if_match(request),
            id_seed=seed_of(request),
        )
        return receipt(written, model=name, version=version, request_id=request_id)

    @post("/{request_id:str}/reject", status_code=200)
    async def reject(
        self, request: Request[Any, Any, Any], request_id: FromPath[str], data: JSONBody[Decision]
    ) -> Response[Receipt]:
        principal = principal_of(request)
        name, version = await _locate_request(request, request_id)
        require(principal, Permission.APPROVE, name)
        registry = services_of(request).registry
        model_id = await registry.model_id(name)
        command = RejectPromotion(
            actor=principal.name, now=registry.now(), request_id=request_id, comment=data.comment
        )
        written = await registry.execute(
            model_id, command, if_version=if_match(request), id_seed=seed_of(request)
        )
        return receipt(written, model=name, version=version, request_id=request_id)

    @post("/{request_id:str}/cancel", status_code=200)
    async def cancel(
        self, request: Request[Any, Any, Any], request_id: FromPath[str], data: JSONBody[Decision]
    ) -> Response[Receipt]:
        """The requester (or an admin) withdraws a pending request."""
        principal = principal_of(request)
        name, version = await _locate_request(request, request_id)
        require(principal, Permission.WRITE, name)
        registry = services_of(request).registry
        model_id = await registry.model_id(name)
        command = CancelPromotion(
            actor=principal.name,
            now=registry.now(),
            request_id=request_id,
            comment=data.comment,
            actor_is_admin=Permission.ADMIN in principal.permissions,
        )
        written = await registry.execute(
            model_id, command, if_version=if_match(request), id_seed=seed_of(request)
        )
        return receipt(written, model=name, version=version, request_id=request_id)


async def _locate_request(request: Request[Any, Any, Any], request_id: str) -> tuple[str, int]:
    """The model name and version of a request, from the command side (so a request made a
    moment ago is found even before the approvals view shows it)."""
    name, _, version = await services_of(request).registry.locate_request(request_id)
    return name, version


async def _visible(
    request: Request[Any, Any, Any], found: list[ApprovalRequest]
) -> list[ApprovalRequest]:
    principal = principal_of(request)
    if not principal.scopes:
        return found
    names = await model_names(services_of(request).pool, {item.model_id for item in found})
    return [
        item for item in found if item.model_id in names and covers(principal, names[item.model_id])
    ]


class RegistryPolicyController(Controller):
    path = "/policy"
    tags = ["policy"]

    @get("/")
    async def read(self, request: Request[Any, Any, Any]) -> Response[PolicyView]:
        require(principal_of(request), Permission.READ)
        version, policy = await services_of(request).registry.registry_policy_revision()
        return Response(policy_view("registry", policy), headers={"ETag": etag(version)})

    @put("/")
    async def update(
        self, request: Request[Any, Any, Any], data: JSONBody[PolicyUpdate]
    ) -> Response[Receipt]:
        principal = principal_of(request)
        require(principal, Permission.ADMIN)
        policy = data.policy.to_policy()
        validate_policy(policy)  # a malformed policy is named for that first
        await _refuse_stranding(services_of(request), policy)
        written = await services_of(request).registry.set_registry_policy(
            policy,
            actor=principal.name,
            comment=data.comment,
            if_version=if_match(request),
        )
        return receipt(written)
