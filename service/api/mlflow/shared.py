"""What the MLflow routes share: finding what MLflow may see, fresh reads, the answers.
I/O: Postgres through the registry and the views.

MLflow's deletions are modelreg's archive (a model) and deprecation (a version): history
is never erased. To an MLflow caller such a model or version does not exist
(RESOURCE_DOES_NOT_EXIST), as in MLflow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Request

from events.access import Permission
from events.errors import NotFoundError, ValidationError
from events.mlflow_filter import Target, parse_filter, parse_order_by, with_tie_breakers
from events.model.state import ModelState, VersionState
from projections.mlflow_views import (
    MlflowVersion,
    SearchPage,
    alias_query,
    get_version,
    highest_live_query,
    latest_versions,
    version_of,
    version_query,
)
from projections.paging import CursorSeal, InvalidQueryError, merge_names
from projections.views import model_catalogue, model_versions
from service.api.auth import require
from service.api.common import (
    FirstRead,
    ModelReader,
    Reader,
    cursor_seal,
    principal_of,
    read_model_views,
    read_views,
    services_of,
)
from service.api.mlflow.wire import ModelVersion, RegisteredModel, model_version, registered_model
from service.api.services import Services
from service.commands.tokens import covers

VIEWS = [model_catalogue.PROJECTION, model_versions.PROJECTION]
VIEW_NAMES = merge_names(*(p.view_names() for p in VIEWS))
DELETED_REASON = "deleted through the MLflow API"


def no_model(name: str) -> NotFoundError:
    return NotFoundError(f"Registered Model with name={name} not found", name=name)


def unknown_alias(alias: str) -> ValidationError:
    return ValidationError(
        "alias", "unknown", f"Registered model alias {alias} not found.", alias=alias
    )


def no_live_versions(name: str) -> NotFoundError:
    return NotFoundError(f"Registered Model with name={name} has no versions", name=name)


def no_version(name: str, version: int) -> NotFoundError:
    return NotFoundError(
        f"Model Version (name={name}, version={version}) not found", name=name, version=version
    )


async def live_model(services: Services, name: str) -> tuple[str, ModelState]:
    """The id and state of a model MLflow may see (registered, not archived)."""
    try:
        model_id, _, state = await services.registry.model(name)
    except NotFoundError:
        raise no_model(name) from None
    if state.archived:
        raise no_model(name)
    return model_id, state


def live_version(state: ModelState, name: str, number: int) -> VersionState:
    found = state.versions.get(number)
    if found is None or found.deprecated:
        raise no_version(name, number)
    return found


@asynccontextmanager
async def model_reader(services: Services, model_id: str) -> AsyncIterator[Reader]:
    """The views, once they show the model's latest sealed event (read-your-writes)."""
    async with read_views(services, VIEWS, as_of=None, min_position=None, model_id=model_id) as r:
        yield r


@asynccontextmanager
async def current_reader(services: Services) -> AsyncIterator[Reader]:
    """The views, once they show everything sealed when the call came: a search right
    after a write sees it, as MLflow callers expect of a database-backed registry."""
    async with read_views(services, VIEWS, as_of=None, min_position=None, latest=True) as r:
        yield r


async def model_answer(services: Services, model_id: str, name: str) -> RegisteredModel:
    async with model_reader(services, model_id) as reader:
        row = await model_catalogue.get_model(reader.conn, reader.names, model_id)
        if row is None or row.archived:
            raise no_model(name)
        latest = await latest_versions(reader.conn, reader.names, [model_id])
    return registered_model(row, latest[model_id])


async def version_row(services: Services, model_id: str, name: str, number: int) -> MlflowVersion:
    async with model_reader(services, model_id) as reader:
        row = await get_version(reader.conn, reader.names, model_id, number)
    if row is None or row.deleted:
        raise no_version(name, number)
    return row


async def version_answer(services: Services, model_id: str, name: str, number: int) -> ModelVersion:
    return model_version(await version_row(services, model_id, name, number))


# --- reads by name: the model found and the views' freshness learnt in one round trip ---


@asynccontextmanager
async def named_reader(
    services: Services, name: str, first: FirstRead | None = None
) -> AsyncIterator[ModelReader]:
    """The views for the model named ``name``, once they show its latest sealed event;
    MLflow's RESOURCE_DOES_NOT_EXIST when no model has the name."""
    async with read_model_views(services, VIEWS, name, missing=no_model, first=first) as reader:
        yield reader


async def _hidden(reader: ModelReader, name: str, missing: Exception) -> Exception:
    """What a read that found no row answers: no model when MLflow may not see the model
    (deleted), else ``missing``. Only failed reads pay for this look at the catalogue."""
    row = await model_catalogue.get_model(reader.conn, reader.names, reader.model_id)
    return no_model(name) if row is None or row.archived else missing


async def named_model_answer(services: Services, name: str) -> RegisteredModel:
    async with named_reader(services, name, FirstRead(model_catalogue.model_query)) as reader:
        record = await reader.first_row()
        row = None if record is None else model_catalogue.row_from_record(record)
        if row is None or row.archived:
            raise no_model(name)
        latest = await latest_versions(reader.conn, reader.names, [reader.model_id])
    return registered_model(row, latest[reader.model_id])


async def named_version_row(services: Services, name: str, number: int) -> MlflowVersion:
    async with named_reader(services, name, FirstRead(version_query, (number,))) as reader:
        row = version_of(await reader.first_row())
        if row is None or row.deleted or row.model_archived:
            raise await _hidden(reader, name, no_version(name, number))
    return row


async def named_alias_row(services: Services, name: str, alias: str) -> MlflowVersion:
    """The version ``alias`` points at; ``latest`` is the highest live version. An unknown
    alias is INVALID_PARAMETER_VALUE, as MLflow answers it."""
    latest = alias == "latest"
    first = FirstRead(highest_live_query) if latest else FirstRead(alias_query, (alias,))
    async with named_reader(services, name, first) as reader:
        row = version_of(await reader.first_row())
        if latest:
            if row is None or row.model_archived:
                raise await _hidden(reader, name, no_live_versions(name))
            return row
        if row is None or row.model_archived:
            raise await _hidden(reader, name, unknown_alias(alias))
        if row.deleted:
            raise no_version(name, row.version)
    return row


async def named_latest_versions(services: Services, name: str) -> list[MlflowVersion]:
    async with named_reader(services, name) as reader:
        row = await model_catalogue.get_model(reader.conn, reader.names, reader.model_id)
        if row is None or row.archived:
            raise no_model(name)
        latest = await latest_versions(reader.conn, reader.names, [reader.model_id])
    return latest[reader.model_id]


@asynccontextmanager
async def searched(
    request: Request[Any, Any, Any],
    target: Target,
    run: Callable[..., Awaitable[SearchPage]],
    *,
    filter_text: str | None,
    order_by: list[str] | None,
    page_token: str | None,
    limit: int,
) -> AsyncIterator[tuple[Reader, SearchPage, CursorSeal]]:
    """One page of an MLflow search (``run``: ``search_models`` or ``search_versions``)
    over the models in the caller's scope, read from views that show everything sealed
    when the call came; with the reader (for what the page needs besides) and the seal of
    its next page token. A token that is not one of ours answers 400."""
    principal = principal_of(request)
    require(principal, Permission.READ)
    clauses = parse_filter(filter_text, target)
    order = with_tie_breakers(parse_order_by(order_by or [], target), target)
    seal = cursor_seal(request)
    async with current_reader(services_of(request)) as reader:
        try:
            page = await run(
                reader.conn,
                reader.names,
                clauses=clauses,
                filter_text=filter_text or "",
                order=order,
                limit=limit,
                cursor=seal.open(page_token),
                scopes=() if covers(principal, None) else principal.scopes,
            )
        except InvalidQueryError as exc:
            raise ValidationError("page_token", "invalid", str(exc)) from None
        yield reader, page, seal
