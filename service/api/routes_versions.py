"""``/api/v1/models/{name}/versions``: register, search, read, describe, tag, deprecate;
metrics of a version; comparison of versions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from events.access import Permission
from events.errors import NotFoundError
from events.model.commands import (
    DeprecateVersion,
    RegisterVersion,
    RemoveVersionTags,
    SetVersionTags,
    UpdateVersionDescription,
)
from events.names import PLACE_NAME_MAX
from events.policy import GovernancePolicy
from events.version_content import VersionContent, validate_content
from projections.paging import InvalidQueryError, Page
from projections.search import VersionQuery, search_versions
from projections.views import metric_history, model_catalogue, model_versions
from projections.views.metric_history import (
    Comparison,
    MetricHistory,
    MetricSample,
    MetricSeries,
)
from projections.views.model_versions import MetricValue, VersionRow
from service.api.auth import require
from service.api.common import (
    MAX_VERSION,
    MIN_VERSION,
    FirstRead,
    Reader,
    Receipt,
    VersionNumber,
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
from service.api.problems import BadRequestError
from service.api.routes_models import AsOf, MinPosition
from service.api.schemas import MetricBatch, Reason, StageNameQuery, TagValue, UpdateModel
from service.api.schemas import RegisterVersion as RegisterVersionBody
from service.artifacts.service import Guards, with_stored_blobs
from service.commands.registry import Written

VERSIONS = [model_catalogue.PROJECTION, model_versions.PROJECTION]
METRICS = [model_versions.PROJECTION, metric_history.PROJECTION]


def _content(body: RegisterVersionBody) -> VersionContent:
    fields = msgspec.to_builtins(body)
    fields["parameters"] = fields.pop("params")
    for name in ("tags", "description"):
        fields.pop(name)
    return msgspec.convert(fields, VersionContent)


def _bad_query(exc: InvalidQueryError) -> BadRequestError:
    return bad_query(exc)


class VersionsController(Controller):
    path = "/models/{name:str}/versions"
    tags = ["versions"]

    @post("/", status_code=201)
    async def register(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        data: JSONBody[RegisterVersionBody],
    ) -> Response[Receipt]:
        """Register a version: its number is the model's highest ever plus one."""
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        services = services_of(request)
        registry = services.registry
        content = _content(data)
        now = registry.now()

        def build(registry_policy: GovernancePolicy) -> RegisterVersion:
            return RegisterVersion(
                actor=principal.name,
                now=now,
                content=content,
                description=data.description,
                tags=data.tags,
                # Where the version starts: the initial stage of the policy in force, which
                # the append's guard holds to (a policy changed meanwhile is decided again).
                registry_policy=registry_policy,
            )

        async def register_in(model_id: str, named: str | None) -> Written:
            validate_content(content)  # a malformed entry is named for what it is, first

            async def append(guards: Guards | None) -> Written:
                return await registry.under_registry_policy(
                    model_id,
                    build,
                    if_version=if_match(request),
                    id_seed=seed_of(request),
                    guards=guards,
                    named=named,
                )

            return await with_stored_blobs(
                registry, services.blobs, model_id, content.artifacts, append
            )

        written = await registry.on_named(name, register_in)
        number = next(
            (e.version for e in written.events if e.event_type == "model.version_registered"), None
        )
        return receipt(
            written,
            model=name,
            version=number,
            status=201,
            location=f"/api/v1/models/{name}/versions/{number}",
        )

    @get("/")
    async def search(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        q: Annotated[str | None, QueryParameter(description="Substring of the model name")] = None,
        tag: FromQuery[list[str] | None] = None,
        stage: FromQuery[list[StageNameQuery] | None] = None,
        alias: FromQuery[str | None] = None,
        metric: FromQuery[list[str] | None] = None,
        deprecated: FromQuery[bool | None] = None,
        environment: Annotated[
            str | None,
            QueryParameter(
                description="Versions in this environment of their stage (stages with environments)",
                max_length=PLACE_NAME_MAX,
            ),
        ] = None,
        order_by: Annotated[
            str,
            QueryParameter(
                description="version, created, updated, metric:KEY[DATASET]; '-' descending"
            ),
        ] = "-version",
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        as_of: AsOf = None,
        min_position: MinPosition = None,
    ) -> Page[VersionRow]:
        require(principal_of(request), Permission.READ, name)
        services = services_of(request)
        query = VersionQuery(
            q=q,
            tags=tuple(tag or ()),
            stages=tuple(stage or ()),
            alias=alias,
            metrics=tuple(metric or ()),
            deprecated=deprecated,
            environment=environment,
            order=order_by,
            limit=limit,
            cursor=cursor,
        )
        seal = cursor_seal(request)
        async with read_model_views(
            services, VERSIONS, name, as_of=as_of, min_position=min_position
        ) as reader:
            try:
                query = msgspec.structs.replace(query, cursor=seal.open(cursor))
                page = await search_versions(reader.conn, reader.names, reader.model_id, query)
                return sealed(page, seal)
            except InvalidQueryError as exc:
                raise _bad_query(exc) from None

    @get("/{version:int}")
    async def read(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        version: VersionNumber,
        as_of: AsOf = None,
        min_position: MinPosition = None,
    ) -> Response[VersionRow]:
        require(principal_of(request), Permission.READ, name)
        services = services_of(request)
        first = FirstRead(model_versions.version_query, (version,))
        async with read_model_views(
            services,
            VERSIONS,
            name,
            as_of=as_of,
            min_position=min_position,
            first=first,
            metrics_of=version,
        ) as reader:
            record = await reader.first_row()
        stream_version = reader.stream_version
        row = None if record is None else model_versions.row_from_record(record)
        if row is None:
            raise NotFoundError(
                f"model {name!r} has no version {version}" + (" then" if as_of else ""),
                version=version,
            )
        return Response(row, headers={"ETag": etag(stream_version)})

    @get("/by-alias/{alias:str}")
    async def by_alias(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        alias: FromPath[str],
        as_of: AsOf = None,
        min_position: MinPosition = None,
    ) -> Response[VersionRow]:
        require(principal_of(request), Permission.READ, name)
        services = services_of(request)
        first = FirstRead(*model_versions.alias_query(alias))
        async with read_model_views(
            services, VERSIONS, name, as_of=as_of, min_position=min_position, first=first
        ) as reader:
            record = await reader.first_row()
        stream_version = reader.stream_version
        row = None if record is None else model_versions.row_from_record(record)
        if row is None:
            raise NotFoundError(
                f"model {name!r} has no alias {alias!r}" + (" then" if as_of else ""), alias=alias
            )
        return Response(row, headers={"ETag": etag(stream_version)})

    @patch("/{version:int}")
    async def update(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        version: VersionNumber,
        data: JSONBody[UpdateModel],
    ) -> Response[Receipt]:
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        return await _version_command(
            request,
            name,
            version,
            UpdateVersionDescription(
                actor=principal.name,
                now=services_of(request).registry.now(),
                version=version,
                description=data.description,
            ),
        )

    @put("/{version:int}/tags/{key:str}")
    async def set_tag(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        version: VersionNumber,
        key: FromPath[str],
        data: JSONBody[TagValue],
    ) -> Response[Receipt]:
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        return await _version_command(
            request,
            name,
            version,
            SetVersionTags(
                actor=principal.name,
                now=services_of(request).registry.now(),
                version=version,
                tags={key: data.value},
            ),
        )

    @delete("/{version:int}/tags/{key:str}", status_code=200)
    async def remove_tag(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        version: VersionNumber,
        key: FromPath[str],
    ) -> Response[Receipt]:
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        return await _version_command(
            request,
            name,
            version,
            RemoveVersionTags(
                actor=principal.name,
                now=services_of(request).registry.now(),
                version=version,
                keys=(key,),
            ),
        )

    @post("/{version:int}/deprecate", status_code=200)
    async def deprecate(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        version: VersionNumber,
        data: JSONBody[Reason],
    ) -> Response[Receipt]:
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        return await _version_command(
            request,
            name,
            version,
            DeprecateVersion(
                actor=principal.name,
                now=services_of(request).registry.now(),
                version=version,
                reason=data.reason,
            ),
        )

    @post("/{version:int}/metrics", status_code=201)
    async def log_metrics(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        version: VersionNumber,
        data: JSONBody[MetricBatch],
    ) -> Response[Receipt]:
        """Log a batch of metric points (1 to 1,000; finite values)."""
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        registry = services_of(request).registry
        written = await registry.log_metrics(
            name,
            version,
            [m.to_input() for m in data.metrics],
            actor=principal.name,
            id_seed=seed_of(request),
        )
        return receipt(written, model=name, version=version, status=201)

    @get("/{version:int}/metrics")
    async def metrics(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        version: VersionNumber,
        key: Annotated[
            str | None,
            QueryParameter(
                description="Give a key for its history; omit for the latest value of each"
            ),
        ] = None,
        dataset: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 1000,
        as_of: AsOf = None,
        min_position: MinPosition = None,
    ) -> Page[MetricSample] | tuple[MetricValue, ...]:
        require(principal_of(request), Permission.READ, name)
        async with _metrics_reader(
            request, name, (version,), as_of=as_of, min_position=min_position
        ) as (model_id, reader):
            if key is None:
                return await model_versions.latest_metrics(
                    reader.conn, reader.names, model_id, version
                )
            try:
                seal = cursor_seal(request)
                page = await metric_history.metric_history(
                    reader.conn,
                    reader.names,
                    model_id,
                    version,
                    key,
                    dataset=dataset,
                    cursor=seal.open(cursor),
                    limit=limit,
                )
                return sealed(page, seal)
            except InvalidQueryError as exc:
                raise _bad_query(exc) from None

    @get("/{version:int}/metrics/series")
    async def series(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        version: VersionNumber,
        as_of: AsOf = None,
        min_position: MinPosition = None,
    ) -> tuple[MetricSeries, ...]:
        require(principal_of(request), Permission.READ, name)
        async with _metrics_reader(
            request, name, (version,), as_of=as_of, min_position=min_position
        ) as (model_id, reader):
            return await metric_history.metric_series(reader.conn, reader.names, model_id, version)

    @get("/{version:int}/metrics/histories")
    async def histories(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        version: VersionNumber,
        limit: Annotated[
            int, QueryParameter(ge=1, le=10_000, description="Points per series at most")
        ] = 1000,
        as_of: AsOf = None,
        min_position: MinPosition = None,
    ) -> tuple[MetricHistory, ...]:
        """Every metric series of the version with its first ``limit`` points in step order,
        in one answer: what a dashboard needs to draw a chart per metric."""
        require(principal_of(request), Permission.READ, name)
        async with _metrics_reader(
            request, name, (version,), as_of=as_of, min_position=min_position
        ) as (model_id, reader):
            try:
                return await metric_history.metric_histories(
                    reader.conn, reader.names, model_id, version, limit=limit
                )
            except InvalidQueryError as exc:
                raise _bad_query(exc) from None

    @get("/{version:int}/metrics/{key:str}/best")
    async def best(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        version: VersionNumber,
        key: FromPath[str],
        dataset: FromQuery[str] = "",
        goal: FromQuery[Literal["max", "min"]] = "max",
        as_of: AsOf = None,
        min_position: MinPosition = None,
    ) -> MetricSample:
        require(principal_of(request), Permission.READ, name)
        async with _metrics_reader(
            request, name, (version,), as_of=as_of, min_position=min_position
        ) as (model_id, reader):
            sample = await metric_history.best_metric(
                reader.conn, reader.names, model_id, version, key, dataset, goal
            )
        if sample is None:
            raise NotFoundError(f"version {version} of {name!r} has no metric {key!r}", key=key)
        return sample


class CompareController(Controller):
    path = "/models/{name:str}/compare"
    tags = ["versions"]

    @get("/")
    async def compare(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        versions: Annotated[
            str, QueryParameter(description="Comma-separated version numbers, e.g. 1,2,3")
        ],
        as_of: AsOf = None,
        min_position: MinPosition = None,
    ) -> Comparison:
        """Parameters and latest metrics of several versions side by side."""
        require(principal_of(request), Permission.READ, name)
        try:
            numbers = [int(v) for v in versions.split(",") if v.strip()]
        except ValueError:
            raise BadRequestError(
                "versions", "pattern", "versions is a comma-separated list of version numbers"
            ) from None
        if not numbers:
            raise BadRequestError("versions", "required", "name at least one version")
        if not all(MIN_VERSION <= number <= MAX_VERSION for number in numbers):
            raise BadRequestError("versions", "range", f"a version number is at most {MAX_VERSION}")
        async with _metrics_reader(
            request, name, numbers, as_of=as_of, min_position=min_position
        ) as (model_id, reader):
            try:
                return await metric_history.compare_versions(
                    reader.conn, reader.names, model_id, numbers
                )
            except InvalidQueryError as exc:
                raise _bad_query(exc) from None


@asynccontextmanager
async def _metrics_reader(
    request: Request[Any, Any, Any],
    name: str,
    versions: Sequence[int],
    *,
    as_of: str | None,
    min_position: int | None,
) -> AsyncIterator[tuple[str, Reader]]:
    """The model's id and the metrics views, once they show the model's latest event and
    the latest metrics of ``versions`` (or folded to ``as_of``)."""
    services = services_of(request)
    model_id, _ = await services.registry.locate(name)
    async with read_views(
        services,
        METRICS,
        as_of=as_of,
        min_position=min_position,
        model_id=model_id,
        metrics_of=versions,
    ) as reader:
        yield model_id, reader


async def _version_command(
    request: Request[Any, Any, Any], name: str, version: int, command: Any
) -> Response[Receipt]:
    registry = services_of(request).registry

    async def execute_in(model_id: str, named: str | None) -> Written:
        return await registry.execute(
            model_id, command, if_version=if_match(request), id_seed=seed_of(request), named=named
        )

    written = await registry.on_named(name, execute_in)
    return receipt(written, model=name, version=version)
