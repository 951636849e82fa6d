"""``/api/v1/models``: register, search, read, describe, rename, archive, restore, tags."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from events.access import Permission
from events.errors import NotFoundError
from events.model.commands import (
    ArchiveModel,
    DeleteModel,
    RegisterModel,
    RemoveModelTags,
    RenameModel,
    RestoreModel,
    SetModelTags,
    UpdateModelDescription,
)
from projections.paging import InvalidQueryError, Page
from projections.search import ModelQuery, search_models
from projections.views import model_catalogue, model_versions
from projections.views.model_catalogue import ModelRow
from service.api.auth import require
from service.api.common import (
    MAX_POSITION,
    FirstRead,
    Receipt,
    bad_query,
    cursor_seal,
    etag,
    if_match,
    principal_of,
    read_model_views,
    read_views,
    receipt,
    sealed,
    seed_of,
    services_of,
)
from service.api.schemas import CreateModel, Reason, Rename, StageNameQuery, TagValue, UpdateModel
from service.commands.tokens import covers

CATALOGUE = [model_catalogue.PROJECTION, model_versions.PROJECTION]
AsOf = Annotated[
    str | None,
    QueryParameter(description="A log position or an RFC 3339 time: the model as it stood then"),
]
MinPosition = Annotated[
    int | None,
    QueryParameter(
        ge=0,
        le=MAX_POSITION,
        description="Wait (bounded) until the views reached this log position",
    ),
]


class ModelsController(Controller):
    path = "/models"
    tags = ["models"]

    @post("/", status_code=201)
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[CreateModel]
    ) -> Response[Receipt]:
        """Register a model; its name must be unique (409 otherwise)."""
        principal = principal_of(request)
        require(principal, Permission.WRITE, data.name)
        registry = services_of(request).registry

        def command(model_id: str) -> RegisterModel:
            return RegisterModel(
                actor=principal.name,
                now=registry.now(),
                model_id=model_id,
                name=data.name,
                owner=data.owner or principal.name,
                description=data.description,
                tags=data.tags,
            )

        written = await registry.register_model(command, id_seed=seed_of(request))
        return receipt(written, model=data.name, status=201, location=f"/api/v1/models/{data.name}")

    @get("/")
    async def search(
        self,
        request: Request[Any, Any, Any],
        q: Annotated[
            str | None,
            QueryParameter(description="Name substring (case-insensitive), or a glob with *"),
        ] = None,
        tag: Annotated[
            list[str] | None, QueryParameter(description="key=value or key; repeat for AND")
        ] = None,
        stage: Annotated[
            list[StageNameQuery] | None,
            QueryParameter(description="Has a version in this stage"),
        ] = None,
        alias: FromQuery[str | None] = None,
        owner: FromQuery[str | None] = None,
        metric: Annotated[
            list[str] | None, QueryParameter(description="e.g. auc>0.9 or auc[holdout]>=0.9")
        ] = None,
        archived: FromQuery[bool | None] = False,
        order_by: Annotated[
            str, QueryParameter(description="name, created, updated; '-' for descending")
        ] = "name",
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        as_of: AsOf = None,
        min_position: MinPosition = None,
    ) -> Page[ModelRow]:
        """Search models; pages are keyset-paginated by ``cursor``."""
        principal = principal_of(request)
        require(principal, Permission.READ)
        query = ModelQuery(
            q=q,
            owner=owner,
            tags=tuple(tag or ()),
            stages=tuple(stage or ()),
            alias=alias,
            metrics=tuple(metric or ()),
            archived=archived,
            order=order_by,
            limit=limit,
            # The scope filters in the query, so a page is full and its cursor in scope.
            scopes=() if covers(principal, None) else principal.scopes,
        )
        seal = cursor_seal(request)
        async with read_views(
            services_of(request), CATALOGUE, as_of=as_of, min_position=min_position
        ) as reader:
            try:
                query = msgspec.structs.replace(query, cursor=seal.open(cursor))
                return sealed(await search_models(reader.conn, reader.names, query), seal)
            except InvalidQueryError as exc:
                raise bad_query(exc) from None

    @get("/{name:str}")
    async def read(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        as_of: AsOf = None,
        min_position: MinPosition = None,
    ) -> Response[ModelRow]:
        """A model as the catalogue shows it (``ETag`` = its stream version)."""
        require(principal_of(request), Permission.READ, name)
        services = services_of(request)
        first = FirstRead(model_catalogue.model_query)
        async with read_model_views(
            services, CATALOGUE, name, as_of=as_of, min_position=min_position, first=first
        ) as reader:
            record = await reader.first_row()
        stream_version = reader.stream_version
        row = None if record is None else model_catalogue.row_from_record(record)
        if row is None:
            raise NotFoundError(
                f"model {name!r} did not exist then"
                if as_of
                else f"model {name!r} is not in the views yet"
            )
        return Response(row, headers={"ETag": etag(stream_version)})

    @patch("/{name:str}")
    async def update(
        self, request: Request[Any, Any, Any], name: FromPath[str], data: JSONBody[UpdateModel]
    ) -> Response[Receipt]:
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        return await _model_command(
            request,
            name,
            UpdateModelDescription(
                actor=principal.name,
                now=services_of(request).registry.now(),
                description=data.description,
            ),
        )

    @post("/{name:str}/rename", status_code=200)
    async def rename(
        self, request: Request[Any, Any, Any], name: FromPath[str], data: JSONBody[Rename]
    ) -> Response[Receipt]:
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        require(principal, Permission.WRITE, data.new_name)
        response = await _model_command(
            request,
            name,
            RenameModel(
                actor=principal.name,
                now=services_of(request).registry.now(),
                new_name=data.new_name,
            ),
        )
        response.headers["Location"] = f"/api/v1/models/{data.new_name}"
        return response

    @post("/{name:str}/archive", status_code=200)
    async def archive(
        self, request: Request[Any, Any, Any], name: FromPath[str], data: JSONBody[Reason]
    ) -> Response[Receipt]:
        return await _admin_model_command(request, name, ArchiveModel, data.reason)

    @post("/{name:str}/delete", status_code=200)
    async def delete_model(
        self, request: Request[Any, Any, Any], name: FromPath[str], data: JSONBody[Reason]
    ) -> Response[Receipt]:
        """Delete the model (admin): it leaves every listing, search and MLflow answer, its
        name is free for a new model, open promotion requests are cancelled, and its stored
        files become collectable after the GC grace period. Its history stays in the log,
        ending with a tombstone event that says who deleted it and why. Refused while a
        version is in production."""
        return await _admin_model_command(request, name, DeleteModel, data.reason)

    @post("/{name:str}/restore", status_code=200)
    async def restore(
        self, request: Request[Any, Any, Any], name: FromPath[str], data: JSONBody[Reason]
    ) -> Response[Receipt]:
        return await _admin_model_command(request, name, RestoreModel, data.reason)

    @put("/{name:str}/tags/{key:str}")
    async def set_tag(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        key: FromPath[str],
        data: JSONBody[TagValue],
    ) -> Response[Receipt]:
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        return await _model_command(
            request,
            name,
            SetModelTags(
                actor=principal.name,
                now=services_of(request).registry.now(),
                tags={key: data.value},
            ),
        )

    @delete("/{name:str}/tags/{key:str}", status_code=200)
    async def remove_tag(
        self, request: Request[Any, Any, Any], name: FromPath[str], key: FromPath[str]
    ) -> Response[Receipt]:
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        return await _model_command(
            request,
            name,
            RemoveModelTags(
                actor=principal.name, now=services_of(request).registry.now(), keys=(key,)
            ),
        )


async def _admin_model_command(
    request: Request[Any, Any, Any],
    name: str,
    command: type[ArchiveModel | DeleteModel | RestoreModel],
    reason: str,
) -> Response[Receipt]:
    """Archive, restore or delete: ADMIN on the model, and a reason."""
    principal = principal_of(request)
    require(principal, Permission.ADMIN, name)
    now = services_of(request).registry.now()
    return await _model_command(
        request, name, command(actor=principal.name, now=now, reason=reason)
    )


async def _model_command(
    request: Request[Any, Any, Any], name: str, command: Any
) -> Response[Receipt]:
    registry = services_of(request).registry
    model_id = await registry.model_id(name)
    written = await registry.execute(
        model_id, command, if_version=if_match(request), id_seed=seed_of(request)
    )
    return receipt(written, model=name)
