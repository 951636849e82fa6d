"""``/api/2.0/mlflow/registered-models/*``: MLflow's registered-model RPCs as modelreg commands.

Each write is the modelreg command ``/api/v1`` would run (same permission, same
governance, same events on the log and on NATS), with the caller's principal as actor:
MLflow's ``user_id``. A delete archives the model (history is kept; MLflow callers no
longer see it and its name stays taken, see the README).
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, delete, get, patch, post
from litestar.params import FromQuery, JSONBody, QueryParameter

from events.access import Permission
from events.errors import AlreadyExistsError, NotFoundError, ValidationError
from events.mlflow_filter import Target
from events.mlflow_stages import stage_from_mlflow
from events.model.commands import (
    ArchiveModel,
    RegisterModel,
    RemoveAlias,
    RemoveModelTags,
    RenameModel,
    SetAlias,
    SetModelTags,
    UpdateModelDescription,
)
from events.model.state import ModelState
from events.policy import GovernancePolicy
from projections.mlflow_views import latest_versions, search_models
from service.api.auth import require
from service.api.common import principal_of, seed_of, services_of
from service.api.mlflow import wire
from service.api.mlflow.retries import derived_seeds
from service.api.mlflow.shared import (
    DELETED_REASON,
    live_model,
    live_version,
    model_answer,
    named_alias_row,
    named_latest_versions,
    named_model_answer,
    searched,
)
from service.api.services import Services
from service.commands.registry import Written

MAX_MODEL_RESULTS = 1000

NameQuery = Annotated[str, QueryParameter(name="name", min_length=1)]


def _taken(name: str) -> AlreadyExistsError:
    return AlreadyExistsError(
        f"Registered Model (name={name}) already exists. A deleted model keeps its name in"
        " modelreg (its history stays): an admin can restore it"
        f" (POST /api/v1/models/{name}/restore), or choose another name.",
        name=name,
    )


def page_size(value: int | None, default: int, maximum: int) -> int:
    if value is None:
        return default
    if not 1 <= value <= maximum:
        raise ValidationError(
            "max_results", "range", f"max_results must be between 1 and {maximum}, got {value}"
        )
    return value


class RegisteredModelsController(Controller):
    path = "/registered-models"

    @post("/create", status_code=200)
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[wire.CreateRegisteredModel]
    ) -> wire.RegisteredModelAnswer:
        principal = principal_of(request)
        require(principal, Permission.WRITE, data.name)
        services = services_of(request)
        registry = services.registry
        seed, previous = seed_of(request), None
        if seed is None:
            seed, previous = derived_seeds(principal.name, request.url.path, data, registry.now())

        now = registry.now()

        def command(model_id: str) -> RegisterModel:
            return RegisterModel(
                actor=principal.name,
                now=now,
                model_id=model_id,
                name=data.name,
                owner=principal.name,
                description=data.description,
                tags=wire.tags_of(data.tags),
            )

        written = await _recorded_create(services, previous) if previous else None
        if written is None:
            try:
                written = await registry.register_model(command, id_seed=seed)
            except AlreadyExistsError:
                raise _taken(data.name) from None
        if not written.replayed:
            # What it recorded is the answer: no need to wait for the views to show it.
            return wire.RegisteredModelAnswer(
                registered_model=wire.just_registered(written.state, now)
            )
        try:
            created = await model_answer(services, written.model_id, data.name)
        except NotFoundError:
            if written.replayed:  # the create answered again here was deleted since
                raise _taken(data.name) from None
            raise
        return wire.RegisteredModelAnswer(registered_model=created)

    @get("/get")
    async def read(
        self, request: Request[Any, Any, Any], name: NameQuery
    ) -> wire.RegisteredModelAnswer:
        require(principal_of(request), Permission.READ, name)
        return wire.RegisteredModelAnswer(
            registered_model=await named_model_answer(services_of(request), name)
        )

    @post("/rename", status_code=200)
    async def rename(
        self, request: Request[Any, Any, Any], data: JSONBody[wire.RenameRegisteredModel]
    ) -> wire.RegisteredModelAnswer:
        principal = principal_of(request)
        require(principal, Permission.WRITE, data.name)
        require(principal, Permission.WRITE, data.new_name)
        services = services_of(request)
        model_id, _ = await live_model(services, data.name)
        await services.registry.execute(
            model_id,
            RenameModel(actor=principal.name, now=services.registry.now(), new_name=data.new_name),
        )
        return wire.RegisteredModelAnswer(
            registered_model=await model_answer(services, model_id, data.new_name)
        )

    @patch("/update")
    async def update(
        self, request: Request[Any, Any, Any], data: JSONBody[wire.UpdateRegisteredModel]
    ) -> wire.RegisteredModelAnswer:
        principal = principal_of(request)
        require(principal, Permission.WRITE, data.name)
        services = services_of(request)
        model_id, _ = await live_model(services, data.name)
        await services.registry.execute(
            model_id,
            UpdateModelDescription(
                actor=principal.name, now=services.registry.now(), description=data.description
            ),
        )
        return wire.RegisteredModelAnswer(
            registered_model=await model_answer(services, model_id, data.name)
        )

    @delete("/delete", status_code=200)
    async def remove(
        self, request: Request[Any, Any, Any], data: JSONBody[wire.ModelName]
    ) -> wire.Empty:
        """Archives the model: its history stays, MLflow callers no longer see it."""
        principal = principal_of(request)
        require(principal, Permission.ADMIN, data.name)
        services = services_of(request)
        model_id, _ = await live_model(services, data.name)
        await services.registry.execute(
            model_id,
            ArchiveModel(actor=principal.name, now=services.registry.now(), reason=DELETED_REASON),
        )
        return wire.Empty()

    @get("/search")
    async def search(
        self,
        request: Request[Any, Any, Any],
        filter_text: Annotated[str | None, QueryParameter(name="filter")] = None,
        max_results: FromQuery[int | None] = None,
        order_by: FromQuery[list[str] | None] = None,
        page_token: FromQuery[str | None] = None,
    ) -> wire.SearchModelsAnswer:
        async with searched(
            request,
            Target.MODELS,
            search_models,
            filter_text=filter_text,
            order_by=order_by,
            page_token=page_token,
            limit=page_size(max_results, 100, MAX_MODEL_RESULTS),
        ) as (reader, page, seal):
            ids = [m.model_id for m in page.items]
            latest = await latest_versions(reader.conn, reader.names, ids)
        return wire.SearchModelsAnswer(
            registered_models=[wire.registered_model(m, latest[m.model_id]) for m in page.items],
            next_page_token=seal.seal(page.next_cursor),
        )

    @post("/set-tag", status_code=200)
    async def set_tag(
        self, request: Request[Any, Any, Any], data: JSONBody[wire.SetRegisteredModelTag]
    ) -> wire.Empty:
        principal = principal_of(request)
        require(principal, Permission.WRITE, data.name)
        services = services_of(request)
        model_id, _ = await live_model(services, data.name)
        await services.registry.execute(
            model_id,
            SetModelTags(
                actor=principal.name, now=services.registry.now(), tags={data.key: data.value}
            ),
        )
        return wire.Empty()

    @delete("/delete-tag", status_code=200)
    async def delete_tag(
        self, request: Request[Any, Any, Any], data: JSONBody[wire.DeleteRegisteredModelTag]
    ) -> wire.Empty:
        """A tag that is not set is not an error (as in MLflow)."""
        principal = principal_of(request)
        require(principal, Permission.WRITE, data.name)
        services = services_of(request)
        model_id, _ = await live_model(services, data.name)
        await services.registry.execute(
            model_id,
            RemoveModelTags(actor=principal.name, now=services.registry.now(), keys=(data.key,)),
        )
        return wire.Empty()

    @post("/alias", status_code=200)
    async def set_alias(
        self, request: Request[Any, Any, Any], data: JSONBody[wire.SetAlias]
    ) -> wire.Empty:
        """Points (or moves) an alias; governed like ``PUT /api/v1/.../aliases/{alias}``.
        Concurrent moves of one alias take turns on the model's stream: none fails."""
        principal = principal_of(request)
        require(principal, Permission.WRITE, data.name)
        services = services_of(request)
        registry = services.registry
        number = wire.version_number(data.version)
        _, state = await live_model(services, data.name)
        live_version(state, data.name, number)

        def build(
            _model_id: str, _state: ModelState, policy: GovernancePolicy, _metrics: Any
        ) -> SetAlias:
            return SetAlias(
                actor=principal.name,
                now=registry.now(),
                registry_policy=policy,
                alias=data.alias,
                version=number,
            )

        await registry.governed(data.name, build)
        return wire.Empty()

    @delete("/alias", status_code=200)
    async def delete_alias(
        self, request: Request[Any, Any, Any], data: JSONBody[wire.DeleteAlias]
    ) -> wire.Empty:
        """An alias that is not set is not an error (as in MLflow)."""
        principal = principal_of(request)
        require(principal, Permission.WRITE, data.name)
        services = services_of(request)
        registry = services.registry
        _, state = await live_model(services, data.name)
        if data.alias not in state.aliases:
            return wire.Empty()

        def build(
            _model_id: str, _state: ModelState, policy: GovernancePolicy, _metrics: Any
        ) -> RemoveAlias:
            return RemoveAlias(
                actor=principal.name, now=registry.now(), registry_policy=policy, alias=data.alias
            )

        await registry.governed(data.name, build)
        return wire.Empty()

    @get("/alias")
    async def get_alias(
        self,
        request: Request[Any, Any, Any],
        name: NameQuery,
        alias: Annotated[str, QueryParameter(name="alias", min_length=1)],
    ) -> wire.ModelVersionAnswer:
        """An unknown alias is INVALID_PARAMETER_VALUE, as MLflow answers it; ``latest``
        is the highest live version."""
        require(principal_of(request), Permission.READ, name)
        row = await named_alias_row(services_of(request), name, alias)
        return wire.ModelVersionAnswer(model_version=wire.model_version(row))

    @post("/get-latest-versions", status_code=200)
    async def latest_by_post(
        self, request: Request[Any, Any, Any], data: JSONBody[wire.LatestVersionsRequest]
    ) -> wire.ModelVersionsAnswer:
        """The MLflow client calls POST first (and GET only on ENDPOINT_NOT_FOUND)."""
        return await _latest(request, data.name, data.stages)

    @get("/get-latest-versions")
    async def latest_by_get(
        self,
        request: Request[Any, Any, Any],
        name: NameQuery,
        stages: FromQuery[list[str] | None] = None,
    ) -> wire.ModelVersionsAnswer:
        return await _latest(request, name, stages or [])


async def _latest(
    request: Request[Any, Any, Any], name: str, stages: list[str]
) -> wire.ModelVersionsAnswer:
    require(principal_of(request), Permission.READ, name)
    services = services_of(request)
    wanted = {stage_from_mlflow(s, "stages") for s in stages}
    latest = await named_latest_versions(services, name)
    return wire.ModelVersionsAnswer(
        model_versions=[wire.model_version(v) for v in latest if not wanted or v.stage in wanted]
    )


async def _recorded_create(services: Services, previous_seed: str) -> Written | None:
    """What a create of the previous window recorded under the same derived seed."""
    registry = services.registry
    return await registry.recorded(registry.seeded_model_id(previous_seed), previous_seed)
