"""What every route shares: services, the principal, reading views (live, waited-for or as
of a past position), write receipts with their headers, and parameter parsing."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar, cast

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.params import Parameter

from eventlog.freshness import Freshness, freshness, locate_fresh, wait_for_position
from events.errors import ConflictError, NotFoundError, ValidationError
from events.model.side_effects import side_effects
from events.streams import metrics_stream, model_id_of, model_stream, name_key
from projections.base import Names, Projection
from projections.paging import CursorSeal, InvalidCursorError, InvalidQueryError, Page, merge_names
from projections.registry_state import views_as_of
from service.api.idempotency import id_seed
from service.api.problems import BadRequestError
from service.api.services import Services
from service.commands.registry import Written
from service.commands.tokens import Principal

T = TypeVar("T")

POSITION_HEADER = "Modelreg-Position"
# ``Modelreg-Consistency: latest`` on a read: wait until the views show everything sealed
# when it came, whoever wrote it. For callers that cannot carry a position from their last
# write to their next read, such as the CLI (one process per command).
CONSISTENCY_HEADER = "Modelreg-Consistency"
CONSISTENCY_LATEST = "latest"
_READ_LATEST: ContextVar[bool] = ContextVar("modelreg_read_latest", default=False)
# Log positions and cursors are bigint columns, version numbers int ones: a larger number
# can name nothing, and is refused (400) before it reaches Postgres.
MAX_POSITION = 2**63 - 1
MAX_VERSION = 2**31 - 1
MIN_VERSION = -(2**31)
VersionNumber = Annotated[
    int, Parameter(ge=MIN_VERSION, le=MAX_VERSION, description="A version number")
]
# Digits beyond these lengths name nothing, and are refused before int() (which refuses
# over 4,300 digits with a ValueError of its own).
_POSITION_DIGITS = len(str(MAX_POSITION))


def services_of(request: Request[Any, Any, Any]) -> Services:
    services: Services = request.app.state.services
    return services


def cursor_seal(request: Request[Any, Any, Any]) -> CursorSeal:
    """Seals the cursors handed to clients under a key only the servers hold (derived from
    the token pepper, so every replica seals alike); ``open`` refuses any other cursor."""
    return CursorSeal(services_of(request).pepper.derive("cursors"))


def sealed(page: Page[T], seal: CursorSeal) -> Page[T]:
    return Page(items=page.items, next_cursor=seal.seal(page.next_cursor))


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    principal: Principal = request.user
    return principal


def seed_of(request: Request[Any, Any, Any]) -> str | None:
    return id_seed(request.scope)


def if_match(request: Request[Any, Any, Any]) -> int | None:
    """The stream version an ``If-Match`` header asks for (``"3"``, ``W/"3"`` or ``3``)."""
    value = request.headers.get("if-match")
    if value is None or value.strip() == "*":
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not (text.isascii() and text.isdigit()):
        raise BadRequestError(
            "If-Match", "pattern", "If-Match takes the ETag of a model (its stream version)"
        )
    number = _at_most_position(text)
    if number is None:
        raise BadRequestError(
            "If-Match", "range", f"If-Match is a stream version of at most {MAX_POSITION}"
        )
    return number


def read_consistency(request: Request[Any, Any, Any]) -> None:
    """Take the request's ``Modelreg-Consistency`` for the reads it makes (400 for a value
    other than ``latest``). Set on every request, with or without the header: a server may
    run one request after another in the same context (an in-process test transport does)."""
    value = request.headers.get(CONSISTENCY_HEADER)
    _READ_LATEST.set(False)
    if value is None:
        return
    if value.strip().lower() != CONSISTENCY_LATEST:
        raise BadRequestError(
            CONSISTENCY_HEADER,
            "enum",
            f"{CONSISTENCY_HEADER} is {CONSISTENCY_LATEST!r} or left out, not {value!r}",
        )
    _READ_LATEST.set(True)


async def refuse_nul_characters(request: Request[Any, Any, Any]) -> None:
    """Refuse (422, rule ``nul_character``) U+0000 in any path, query or body value.

    Postgres text cannot hold it: in a query it fails the statement, and in a recorded
    event it would stop every projection that stores the text. Runs before the handler.
    """
    for name, value in [*request.path_params.items(), *request.query_params.multi_items()]:
        if isinstance(value, str) and "\x00" in value:
            raise _nul(name)
    if request.route_handler.opt.get("raw_body"):
        return  # a streamed upload (raw bytes, not JSON): reading it here would buffer it
    body = await request.body()
    if b"\\u0000" not in body:  # the only way JSON can carry a NUL
        return
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return  # malformed: the body's decoding reports it (400)
    found = _nul_at(decoded, "")
    if found is not None:
        raise _nul(found)


def _nul(field: str) -> ValidationError:
    return ValidationError(
        field,
        "nul_character",
        f"{field or 'body'} contains the NUL character (U+0000), which cannot be stored",
    )


def _nul_at(value: Any, path: str) -> str | None:
    """The JSON path of the first string (a value or a key) holding a NUL, if any."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        entries = [(f"{path}.{key}" if path else key, key, item) for key, item in value.items()]
    elif isinstance(value, list):
        entries = [(f"{path}[{index}]", "", item) for index, item in enumerate(value)]
    else:
        return None
    for where, key, item in entries:
        found = where if "\x00" in key else _nul_at(item, where)
        if found is not None:
            return found
    return None


# A query refusal names the parameter it is about (its message starts with it).
_QUERY_PARAMETERS = (
    ("metric filter", "metric"),
    ("tag filter", "tag"),
    ("order", "order_by"),
    ("limit", "limit"),
    ("q ", "q"),
    ("compare", "versions"),
    ("goal", "goal"),
)


def bad_query(exc: InvalidQueryError) -> BadRequestError:
    """A 400 naming the query parameter a view refused (``query`` when it cannot tell)."""
    text = str(exc)
    if isinstance(exc, InvalidCursorError):
        return BadRequestError("cursor", "invalid", text)
    field = next((name for prefix, name in _QUERY_PARAMETERS if text.startswith(prefix)), "query")
    return BadRequestError(field, "invalid", text)


def etag(version: int) -> str:
    return f'"{version}"'


def parse_as_of(text: str, field: str = "as_of") -> int | datetime:
    """``as_of`` is a log position (digits) or an RFC 3339 time with a zone."""
    if text.isascii() and text.isdigit():
        number = _at_most_position(text)
        if number is None:
            raise BadRequestError(
                field, "range", f"{field} is a log position of at most {MAX_POSITION}"
            )
        return number
    try:
        moment = msgspec.convert(text, datetime)
    except msgspec.ValidationError:
        raise BadRequestError(
            field,
            "pattern",
            f"{field} is a log position or an RFC 3339 time, e.g. 2026-03-03T14:03:00Z",
        ) from None
    if moment.tzinfo is None:
        raise BadRequestError(
            field, "pattern", f"{field} needs a time zone, e.g. 2026-03-03T14:03:00Z"
        )
    return representable_time(moment, field)


def _at_most_position(digits: str) -> int | None:
    """The number ASCII ``digits`` spell, or None above MAX_POSITION (checked on the
    length first: int() refuses over 4,300 digits, leading zeros included)."""
    significant = digits.lstrip("0") or "0"
    if len(significant) > _POSITION_DIGITS:
        return None
    number = int(significant)
    return number if number <= MAX_POSITION else None


def representable_time(moment: datetime, field: str) -> datetime:
    """``moment`` if it falls within years 1-9999 in UTC. 9999-12-31T23:59:59-14:00 is in
    year 10000 there: Python cannot convert it (OverflowError) nor asyncpg encode it."""
    if moment.tzinfo is None:
        return moment
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise BadRequestError(
            field, "range", f"{field} must fall within years 1 to 9999 in UTC"
        ) from None
    return moment


class NotWrittenError(ConflictError):
    """``min_position`` past the head of the log (409, field ``min_position``, rule
    ``range``)."""

    field = "min_position"
    rule = "range"

    def __init__(self, position: int, head: int) -> None:
        super().__init__(
            f"position {position} has not been written (the log ends at {head})", head=head
        )


class Reader:
    """Where a read runs: a connection (or the pool) and the table names to use."""

    def __init__(
        self, conn: asyncpg.Connection | asyncpg.Pool, names: Names, position: int | None
    ) -> None:
        self.conn = conn
        self.names = names
        self.as_of_position = position


@asynccontextmanager
async def read_views(
    services: Services,
    projections: Sequence[Projection],
    *,
    as_of: str | None,
    min_position: int | None,
    model_id: str | None = None,
    metrics_of: Sequence[int] = (),
    latest: bool = False,
) -> AsyncIterator[Reader]:
    """Live views (after waiting for ``min_position``), or the views folded up to ``as_of``.

    A read about one model (``model_id``) also waits for the views to show that model's
    latest sealed event, so a client reading what it just wrote never sees an older state,
    even without ``min_position``. Metrics live on streams of their own, one per version: a
    read of versions' metrics names them (``metrics_of``) to wait for their latest too.
    ``latest``: wait until the views show everything sealed when the read came, whoever
    wrote it (a read across models that must not be stale, such as an approver's inbox);
    also when the request asked for it (``Modelreg-Consistency: latest``).
    """
    if as_of is not None:
        moment = parse_as_of(as_of)
        async with services.pool.acquire() as pooled:
            conn = cast(asyncpg.Connection, pooled)  # a pooled proxy has the Connection API
            async with views_as_of(conn, moment, projections, model_id=model_id) as (at, names):
                yield Reader(conn, merge_names(*names.values()), at)
        return
    wanted_views = [p.name for p in projections]
    latest = latest or _READ_LATEST.get()
    if model_id is not None or min_position or latest:
        # One round trip answers the common case: the views already show the model's
        # latest sealed event and the position asked for, so there is nothing to wait for.
        streams = (
            []
            if model_id is None
            else [model_stream(model_id), *(metrics_stream(model_id, v) for v in metrics_of)]
        )
        now = await freshness(services.pool, wanted_views, streams=streams)
        if latest:
            min_position = max(min_position or 0, now.head)
        await _views_showing(services, wanted_views, now, min_position)
    yield Reader(services.pool, merge_names(*(p.view_names() for p in projections)), None)


async def _views_showing(
    services: Services, wanted_views: list[str], now: Freshness, min_position: int | None
) -> bool:
    """Return once the views show ``min_position`` and the stream's latest sealed event;
    whether they had to catch up first (False: ``now`` already showed both)."""
    wanted = max(min_position or 0, now.latest)
    if min_position and min_position > now.head:
        # A well-formed request the log's present state cannot answer (yet): a conflict
        # with that state, like any other, not a malformed value.
        raise NotWrittenError(min_position, now.head)
    if wanted <= now.reached:
        return False
    await wait_for_position(
        services.pool,
        wanted,
        wanted_views,
        timeout=services.settings.read_wait_timeout,
        bell=services.views_bell,
    )
    return True


_UNREAD: Any = object()


class ModelReader(Reader):
    """A ``Reader`` for one model, found by name: its id and stream version (the ETag)."""

    def __init__(
        self,
        reader: Reader,
        *,
        model_id: str,
        stream_version: int,
        first: FirstRead | None = None,
    ) -> None:
        super().__init__(reader.conn, reader.names, reader.as_of_position)
        self.model_id = model_id
        self.stream_version = stream_version
        self.first = first
        self.first_read: asyncpg.Record | None = _UNREAD

    async def first_row(self) -> asyncpg.Record | None:
        """The row of the read's ``first`` query: as found with the model when that was
        current, else asked now."""
        if self.first_read is not _UNREAD:
            return self.first_read
        if self.first is None:
            raise RuntimeError("this read was opened without a first query")
        query = self.first.sql(self.names, "$1", 2)
        row: asyncpg.Record | None = await self.conn.fetchrow(
            query, self.model_id, *self.first.args
        )
        return row


def _no_such_model(name: str) -> Exception:
    return NotFoundError(f"no model is named {name!r}", name=name)


class FirstRead(msgspec.Struct, frozen=True):
    """A view query about one model that a live read by name asks in the round trip that
    finds the model (``locate_fresh``): ``sql(names, model, first)`` renders it with the
    model's id as the SQL expression ``model`` and ``args`` numbered from ``$first`` on."""

    sql: Callable[[Names, str, int], str]
    args: tuple[Any, ...] = ()


@asynccontextmanager
async def read_model_views(
    services: Services,
    projections: Sequence[Projection],
    name: str,
    *,
    as_of: str | None = None,
    min_position: int | None = None,
    missing: Callable[[str], Exception] = _no_such_model,
    first: FirstRead | None = None,
    metrics_of: int | None = None,
) -> AsyncIterator[ModelReader]:
    """``read_views`` for the model named ``name``: live reads find the model and learn
    whether the views must catch up in one round trip (``locate_fresh``), where a lookup
    then a probe took two. ``missing(name)`` is raised when no model has the name.

    ``first``: the read's first view query, which ``ModelReader.first_row`` answers. A live
    read asks it in that same round trip, and keeps its row when the views had nothing to
    catch up on (the row is then as current as a query after the probe would have read).
    ``metrics_of``: the version whose metrics the read shows (see ``read_views``)."""
    if as_of is not None:
        try:
            model_id, stream_version = await services.registry.locate(name)
        except NotFoundError:
            raise missing(name) from None
        async with read_views(
            services,
            projections,
            as_of=as_of,
            min_position=min_position,
            model_id=model_id,
            metrics_of=() if metrics_of is None else (metrics_of,),
        ) as reader:
            yield ModelReader(reader, model_id=model_id, stream_version=stream_version, first=first)
        return
    wanted_views = [p.name for p in projections]
    names = merge_names(*(p.view_names() for p in projections))
    found = await locate_fresh(
        services.pool,
        name_key(name),
        wanted_views,
        None if first is None else functools.partial(first.sql, names),
        () if first is None else first.args,
        metrics_of=metrics_of,
    )
    if found.stream_id is None:
        raise missing(name)
    if _READ_LATEST.get():
        min_position = max(min_position or 0, found.freshness.head)
    caught_up = await _views_showing(services, wanted_views, found.freshness, min_position)
    reader = ModelReader(
        Reader(services.pool, names, None),
        model_id=model_id_of(found.stream_id),
        stream_version=found.stream_version,
        first=first,
    )
    if first is not None and not caught_up:
        reader.first_read = found.first
    yield reader


class Receipt(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a write did: the events it recorded, where (stream version, log position)."""

    events: list[str]
    stream_version: int
    position: int | None = None
    model_id: str | None = None
    model: str | None = None
    version: int | None = None
    request_id: str | None = None
    replayed: bool = False
    # Demotions and alias moves the write caused besides what it asked for.
    also_moved: list[str] = msgspec.field(default_factory=list)


def receipt(
    written: Written,
    *,
    model: str | None = None,
    version: int | None = None,
    request_id: str | None = None,
    status: int = 200,
    location: str | None = None,
) -> Response[Receipt]:
    headers = {"ETag": etag(written.stream_version)}
    if written.position is not None:
        headers[POSITION_HEADER] = str(written.position)
    if location is not None:
        headers["Location"] = location
    body = Receipt(
        events=[e.event_type for e in written.events],
        stream_version=written.stream_version,
        position=written.position,
        model_id=written.model_id or None,
        model=model,
        version=version,
        request_id=request_id,
        replayed=written.replayed,
        also_moved=side_effects(written.events),
    )
    return Response(body, status_code=status, headers=headers)
