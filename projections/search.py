"""Search over models and versions: filters, orders and keyset (cursor) pagination.

Queries run straight on the catalogue and versions views (no separate search table): the
version rows already carry the model's name and owner, every filter below but the two
flags is served by an index, and a denormalised search table would double the write cost
of the busiest projection for nothing a query needs.

Filters combine with AND. All of them are optional.

``q`` — the model's name, case-insensitive. Without ``*`` it is a substring match
    (``q=fraud`` finds ``card-fraud-eu``); with ``*`` it is a glob over the whole name,
    ``*`` matching any run of characters (``fraud*`` prefix, ``*-eu`` suffix,
    ``fraud*eu`` both). Names never contain ``*``; ``_`` (and ``%``) match themselves.
    A version search looks the matching models up first and then reads their versions by
    model id: Postgres cannot estimate how many rows a substring matches.
``owner`` — the model's owner, exact.
``tags`` — each entry ``key=value`` (the tag has that value) or ``key`` (the tag is set).
    Models are matched on model tags, versions on version tags.
``stages`` — any of these stages. A model matches when one of its versions is in one.
``alias`` — versions under this alias; models that have it.
``metrics`` — each entry ``key[dataset] OP number`` with OP one of ``>``, ``>=``, ``<``,
    ``<=``, ``=``, on the version's *latest* value of the metric (``events.metrics``):
    ``auc>0.9`` reads the value logged without a dataset, ``auc[holdout]>=0.9`` the one on
    dataset ``holdout``, ``auc[*]>0.9`` any dataset. A model matches when one of its
    versions satisfies every metric entry.
``archived`` (models, default False: archived models are hidden like deleted ones; None:
    both), ``model_archived`` and ``deprecated`` (versions, default None: both).

Version rows come without their ``content`` (None) unless ``with_content`` is set: a
content may list thousands of artifacts, and a list page rarely needs them.

``order`` — a field, ``-`` in front for descending:
    models: ``name`` (default), ``created``, ``updated``;
    versions: ``name`` (model name, then version), ``created`` (default ``-created``),
    ``updated``, ``version`` (model id, then number) and ``metric:KEY`` or
    ``metric:KEY[DATASET]`` (the latest value; versions without it are left out).
Names and ids sort by code point (C collation). Ties are broken by the model id (and
the version number), so every row has a distinct position in the order.

``scopes`` (models) — a scoped caller's scopes: only models named so, or with a name
    starting with a ``prefix*``. Filtered in the query, before the limit, so a page and its
    cursor hold in-scope rows only (a scope filter applied to the page afterwards would
    leave pages short and cursors naming models the caller may not see).

Pagination: a page holds up to ``limit`` rows (1..500) and ``next_cursor`` when more
follow (the API seals it: ``projections.paging.CursorSeal``). The cursor is the last row's sort key (base64url msgpack), so a page is "the
rows after this key": writes between pages never duplicate or skip a row whose sort key
did not change (a row whose key changes while it is paged through, by ``updated``, by a
metric, or by name across a rename, may move). A cursor from another order, or a damaged one, raises
``InvalidCursorError``; any other bad input raises ``InvalidQueryError``. Both are
``ValueError``s the API answers with 400.

Names: ``search_models`` reads ``model_catalogue`` (and ``model_version_metrics`` for
metric filters), ``search_versions`` reads ``model_versions`` and
``model_version_metrics``. Pass ``live_names()`` for the live views, or
``merge_names(...)`` of the temporary names ``fold_as_of`` returned for an as-of search.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Literal, TypeVar, cast

import asyncpg
import msgspec

from events.stages import StageName
from projections.base import Names
from projections.paging import (
    InvalidQueryError,
    Page,
    decode_cursor,
    encode_cursor,
    merge_names,
)
from projections.views import model_catalogue, model_versions
from projections.views.model_catalogue import CATALOGUE, ModelRow
from projections.views.model_versions import VERSIONS, VersionRow

Conn = asyncpg.Connection | asyncpg.Pool
T = TypeVar("T")

MAX_LIMIT = 500
MAX_FILTERS = 20


class ModelQuery(msgspec.Struct, frozen=True, kw_only=True):
    q: str | None = None
    owner: str | None = None
    tags: tuple[str, ...] = ()
    stages: tuple[StageName, ...] = ()
    alias: str | None = None
    metrics: tuple[str, ...] = ()
    archived: bool | None = False
    order: str = "name"
    limit: int = 50
    cursor: str | None = None
    # A scoped caller's scopes (names, or prefixes ending in *); empty: every model. They
    # filter in the query, before the limit, so pages and cursors hold in-scope rows only.
    scopes: tuple[str, ...] = ()


class VersionQuery(msgspec.Struct, frozen=True, kw_only=True):
    q: str | None = None
    owner: str | None = None
    tags: tuple[str, ...] = ()
    stages: tuple[StageName, ...] = ()
    alias: str | None = None
    metrics: tuple[str, ...] = ()
    model_archived: bool | None = None
    deprecated: bool | None = None
    # Versions in this environment of their stage (e.g. stage=production, environment=eu).
    environment: str | None = None
    order: str = "-created"
    limit: int = 50
    cursor: str | None = None
    with_content: bool = False


def live_names() -> Names:
    """The live views every search reads."""
    return merge_names(CATALOGUE.view_names(), VERSIONS.view_names())


# --- parsing ----------------------------------------------------------------------------

_KEY = r"[A-Za-z0-9_][A-Za-z0-9_.:/-]*"
_METRIC = re.compile(
    rf"\s*(?P<key>{_KEY})(?:\[(?P<dataset>\*|{_KEY})\])?\s*(?P<op>>=|<=|>|<|=)\s*(?P<value>\S+)\s*"
)
_TAG = re.compile(rf"(?P<key>{_KEY})(?:=(?P<value>.*))?", re.DOTALL)
_ORDER = re.compile(
    rf"(?P<desc>-)?(?:(?P<field>name|created|updated|version)|metric:(?P<key>{_KEY})(?:\[(?P<dataset>{_KEY})\])?)"
)
Op = Literal[">", ">=", "<", "<=", "="]


class MetricFilter(msgspec.Struct, frozen=True, kw_only=True):
    """``key[dataset] op value``; ``dataset`` None means any dataset, "" none named."""

    key: str
    dataset: str | None
    op: Op
    value: float

    def matches(self, value: float) -> bool:
        return {
            ">": value > self.value,
            ">=": value >= self.value,
            "<": value < self.value,
            "<=": value <= self.value,
            "=": value == self.value,
        }[self.op]


class TagFilter(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    value: str | None  # None: the tag is set, whatever its value


class Order(msgspec.Struct, frozen=True, kw_only=True):
    field: Literal["name", "created", "updated", "version", "metric"]
    descending: bool
    metric_key: str = ""
    metric_dataset: str = ""

    def text(self) -> str:
        body: str = self.field
        if self.field == "metric":
            body = f"metric:{self.metric_key}" + (
                f"[{self.metric_dataset}]" if self.metric_dataset else ""
            )
        return ("-" if self.descending else "") + body


def parse_metric_filter(text: str) -> MetricFilter:
    match = _METRIC.fullmatch(text)
    if match is None:
        raise InvalidQueryError(
            f"metric filter {text!r}: expected e.g. 'auc>0.9' or 'auc[holdout]>=0.9'"
        )
    try:
        value = float(match["value"])
    except ValueError:
        raise InvalidQueryError(
            f"metric filter {text!r}: {match['value']!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise InvalidQueryError(f"metric filter {text!r}: the threshold must be finite")
    dataset = match["dataset"]
    op = cast(Op, match["op"])
    return MetricFilter(
        key=match["key"], dataset=None if dataset == "*" else (dataset or ""), op=op, value=value
    )


def parse_tag_filter(text: str) -> TagFilter:
    match = _TAG.fullmatch(text)
    if match is None:
        raise InvalidQueryError(f"tag filter {text!r}: expected 'key=value' or 'key'")
    return TagFilter(key=match["key"], value=match["value"])


def parse_order(text: str, *, versions: bool) -> Order:
    match = _ORDER.fullmatch(text.strip())
    fields = (
        "name, created, updated, version, metric:KEY[DATASET]"
        if versions
        else "name, created, updated"
    )
    if match is None or (not versions and (match["key"] or match["field"] == "version")):
        raise InvalidQueryError(
            f"order {text!r}: expected one of {fields}, with '-' in front for descending"
        )
    if match["key"]:
        return Order(
            field="metric",
            descending=bool(match["desc"]),
            metric_key=match["key"],
            metric_dataset=match["dataset"] or "",
        )
    field = cast(Literal["name", "created", "updated", "version"], match["field"])
    return Order(field=field, descending=bool(match["desc"]))


def name_pattern(q: str) -> str:
    """The ILIKE pattern for ``q``: a substring without ``*``, else a glob over the name."""
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%") if "*" in q else f"%{escaped}%"


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidQueryError(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def _count(what: str, items: tuple[Any, ...]) -> None:
    if len(items) > MAX_FILTERS:
        raise InvalidQueryError(f"at most {MAX_FILTERS} {what} filters")


# --- SQL building -----------------------------------------------------------------------


class _Sql:
    """Conditions and their bound parameters; values never enter the SQL text."""

    def __init__(self) -> None:
        self.params: list[Any] = []
        self.where: list[str] = []

    def p(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"

    def keyset(self, columns: tuple[str, ...], key: tuple[Any, ...], descending: bool) -> None:
        placeholders = ", ".join(self.p(v) for v in key)
        self.where.append(f"({', '.join(columns)}) {'<' if descending else '>'} ({placeholders})")

    def clause(self) -> str:
        return " WHERE " + " AND ".join(self.where) if self.where else ""


def _tags(sql: _Sql, column: str, tags: tuple[str, ...]) -> None:
    _count("tag", tags)
    for text in tags:
        tag = parse_tag_filter(text)
        if tag.value is None:
            sql.where.append(f"{column} ? {sql.p(tag.key)}")
        else:
            sql.where.append(
                f"{column} @> {sql.p(msgspec.json.encode({tag.key: tag.value}).decode())}::jsonb"
            )


def _metric_conditions(sql: _Sql, alias: str, metric: MetricFilter) -> str:
    parts = [
        f"{alias}.key = {sql.p(metric.key)}",
        f"{alias}.value {metric.op} {sql.p(metric.value)}",
    ]
    if metric.dataset is not None:
        parts.insert(1, f"{alias}.dataset = {sql.p(metric.dataset)}")
    return " AND ".join(parts)


def _metric_filters(texts: tuple[str, ...]) -> list[MetricFilter]:
    _count("metric", texts)
    return [parse_metric_filter(t) for t in texts]


def _metrics(
    sql: _Sql,
    names: Names,
    filters: list[MetricFilter],
    *,
    owner: str,
    version: str | None,
    driver: tuple[str, str] | None = None,
) -> None:
    """Versions (or, with ``version`` None, models) having latest metrics that satisfy every
    filter. Filters on the ``driver`` metric (the one joined as ``s``) bound its index scan."""
    if not filters:
        return
    table = names.model_version_metrics
    if version is not None:
        for i, f in enumerate(filters):
            if (f.key, f.dataset) == driver:
                sql.where.append(f"s.value {f.op} {sql.p(f.value)}")
                continue
            sql.where.append(
                f"EXISTS (SELECT 1 FROM {table} f{i} WHERE f{i}.model_id = {owner} AND f{i}.version = {version}"
                f" AND {_metric_conditions(sql, f'f{i}', f)})"
            )
        return
    # One version of the model must satisfy all the filters together.
    joins = "".join(
        f" JOIN {table} f{i} ON f{i}.model_id = f0.model_id AND f{i}.version = f0.version"
        f" AND {_metric_conditions(sql, f'f{i}', f)}"
        for i, f in enumerate(filters[1:], start=1)
    )
    sql.where.append(
        f"EXISTS (SELECT 1 FROM {table} f0{joins} WHERE f0.model_id = {owner}"
        f" AND {_metric_conditions(sql, 'f0', filters[0])})"
    )


def _scopes(sql: _Sql, column: str, scopes: tuple[str, ...]) -> None:
    if not scopes or "*" in scopes:
        return
    exact = [s for s in scopes if not s.endswith("*")]
    prefixes = [
        s[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        for s in scopes
        if s.endswith("*")
    ]
    sql.where.append(
        f"({column} = ANY ({sql.p(exact)}::text[]) OR {column} LIKE ANY ({sql.p(prefixes)}::text[]))"
    )


def _check_q(q: str | None) -> str | None:
    if q and len(q) > 256:
        raise InvalidQueryError("q is longer than 256 characters")
    return q or None


def _common(sql: _Sql, alias: str, name_column: str, q: str | None, owner: str | None) -> None:
    if q:
        sql.where.append(f"{alias}.{name_column} ILIKE {sql.p(name_pattern(q))}")
    if owner is not None:
        sql.where.append(f"{alias}.owner = {sql.p(owner)}")


# A version search by name first looks up the matching models (one row each), then asks
# for their versions by model id. Postgres cannot estimate how many rows a substring
# matches; told "these 3 models" it reads their versions by key, where "name ILIKE x"
# could walk the whole newest-first index for a name that matches 50 versions out of
# 100,000. Past this many models the match is broad and the filter on names is fine.
MAX_NAME_MATCHES = 1000


async def _models_named(conn: Conn, names: Names, q: str) -> list[str] | None:
    """The ids of the models ``q`` matches, or None when there are too many to list."""
    rows = await conn.fetch(
        f"SELECT model_id FROM {names.model_versions_models} WHERE name ILIKE $1 LIMIT $2",
        name_pattern(q),
        MAX_NAME_MATCHES + 1,
    )
    return None if len(rows) > MAX_NAME_MATCHES else [r["model_id"] for r in rows]


# --- models -----------------------------------------------------------------------------

_MODEL_KEYS: dict[str, tuple[tuple[str, ...], Any]] = {
    "name": (("c.name", "c.model_id"), tuple[str, str]),
    "created": (("c.created_at", "c.model_id"), tuple[datetime, str]),
    "updated": (("c.updated_at", "c.model_id"), tuple[datetime, str]),
}


def _model_key(order: Order, row: ModelRow) -> tuple[Any, ...]:
    first = {"name": row.name, "created": row.created_at, "updated": row.updated_at}[order.field]
    return (first, row.model_id)


async def search_models(conn: Conn, names: Names, query: ModelQuery) -> Page[ModelRow]:
    """Models matching every filter of ``query``, one page in ``query.order``."""
    order = parse_order(query.order, versions=False)
    limit = _limit(query.limit)
    columns, key_type = _MODEL_KEYS[order.field]
    sql = _Sql()
    _common(sql, "c", "name", _check_q(query.q), query.owner)
    _scopes(sql, "c.name", query.scopes)
    _tags(sql, "c.tags", query.tags)
    if query.stages:
        sql.where.append(f"c.stages ?| {sql.p([str(s) for s in query.stages])}::text[]")
    if query.alias is not None:
        sql.where.append(f"c.aliases ? {sql.p(query.alias)}")
    if query.archived is not None:
        sql.where.append(f"c.archived = {sql.p(query.archived)}")
    _metrics(sql, names, _metric_filters(query.metrics), owner="c.model_id", version=None)
    tag = "models:" + order.text()
    if query.cursor:
        sql.keyset(columns, decode_cursor(query.cursor, tag, key_type), order.descending)
    direction = " DESC" if order.descending else ""
    records = await conn.fetch(
        f"SELECT {model_catalogue.columns('c')} FROM {names.model_catalogue} c{sql.clause()}"
        f" ORDER BY {', '.join(c + direction for c in columns)} LIMIT {sql.p(limit + 1)}",
        *sql.params,
    )
    rows = tuple(model_catalogue.row_from_record(r) for r in records[:limit])
    more = len(records) > limit
    return Page(
        items=rows, next_cursor=encode_cursor(tag, _model_key(order, rows[-1])) if more else None
    )


# --- versions ---------------------------------------------------------------------------

# order -> (sort columns inside the page query, the same columns of its result, key type)
_VERSION_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...], Any]] = {
    "name": (
        ("v.model_name", "v.model_id", "v.version"),
        ("model_name", "model_id", "version"),
        tuple[str, str, int],
    ),
    "created": (
        ("v.created_at", "v.model_id", "v.version"),
        ("created_at", "model_id", "version"),
        tuple[datetime, str, int],
    ),
    "updated": (
        ("v.updated_at", "v.model_id", "v.version"),
        ("updated_at", "model_id", "version"),
        tuple[datetime, str, int],
    ),
    "version": (("v.model_id", "v.version"), ("model_id", "version"), tuple[str, int]),
    # The metric's own columns, so the (key, dataset, value, model_id, version) index serves it.
    "metric": (
        ("s.value", "s.model_id", "s.version"),
        ("sort_value", "model_id", "version"),
        tuple[float, str, int],
    ),
}


def _version_key(order: Order, record: asyncpg.Record) -> tuple[Any, ...]:
    first: dict[str, tuple[Any, ...]] = {
        "name": (record["model_name"],),
        "created": (record["created_at"],),
        "updated": (record["updated_at"],),
        "version": (),
        "metric": (record["sort_value"],) if order.field == "metric" else (),
    }
    return (*first[order.field], record["model_id"], record["version"])


def _driver(
    order: Order, filters: list[MetricFilter], query: VersionQuery, model_id: str | None
) -> tuple[tuple[str, str] | None, tuple[str, ...] | None]:
    """The metric to join as ``s`` (and the sort columns it brings): the one ordered by,
    or, in created order, the first one filtered on, whose (key, dataset, created_at) index
    then checks values in that order. Only when nothing else narrows the search: with a
    name, stage, tag... filter too, reading those versions and checking their metrics is
    the cheaper way round."""
    if order.field == "metric":
        return (order.metric_key, order.metric_dataset), None
    alone = not (model_id or query.q or query.owner or query.stages or query.alias or query.tags)
    concrete = [(f.key, f.dataset) for f in filters if f.dataset is not None]
    if order.field == "created" and concrete and alone:
        return concrete[0], ("s.created_at", "s.model_id", "s.version")
    return None, None


def _version_conditions(sql: _Sql, query: VersionQuery, model_id: str | None) -> None:
    if model_id is not None:
        sql.where.append(f"v.model_id = {sql.p(model_id)}")
    if query.owner is not None:
        sql.where.append(f"v.owner = {sql.p(query.owner)}")
    _tags(sql, "v.tags", query.tags)
    if len(query.stages) == 1:  # equality, so the (stage, created_at, ...) index gives the order
        sql.where.append(f"v.stage = {sql.p(str(query.stages[0]))}")
    elif query.stages:
        sql.where.append(f"v.stage = ANY ({sql.p([str(s) for s in query.stages])}::text[])")
    if query.alias is not None:
        sql.where.append(f"v.aliases @> ARRAY[{sql.p(query.alias)}]::text[]")
    if query.environment is not None:
        sql.where.append(f"v.environments @> ARRAY[{sql.p(query.environment)}]::text[]")
    if query.model_archived is not None:
        sql.where.append(f"v.model_archived = {sql.p(query.model_archived)}")
    if query.deprecated is not None:
        sql.where.append(f"v.deprecated = {sql.p(query.deprecated)}")


async def search_versions(
    conn: Conn, names: Names, model_id: str | None, query: VersionQuery
) -> Page[VersionRow]:
    """Versions (of one model, or of all with ``model_id`` None) matching every filter."""
    order = parse_order(query.order, versions=True)
    limit = _limit(query.limit)
    q = _check_q(query.q)
    columns, outer, key_type = _VERSION_KEYS[order.field]
    filters = _metric_filters(query.metrics)
    driver, driver_columns = _driver(order, filters, query, model_id)
    sql = _Sql()
    select = model_versions.columns("v", content=query.with_content)
    source = f"{names.model_versions} v"
    if driver is not None:
        if order.field == "metric":
            select += ", s.value AS sort_value"
        source += (
            f" JOIN {names.model_version_metrics} s ON s.model_id = v.model_id AND s.version = v.version"
            f" AND s.key = {sql.p(driver[0])} AND s.dataset = {sql.p(driver[1])}"
        )
    columns = driver_columns or columns
    _version_conditions(sql, query, model_id)
    _metrics(sql, names, filters, owner="v.model_id", version="v.version", driver=driver)
    tag = "versions:" + order.text()
    if query.cursor:
        sql.keyset(columns, decode_cursor(query.cursor, tag, key_type), order.descending)
    if q is not None:  # last, once every input is known to be valid
        named = await _models_named(conn, names, q)
        if named == []:
            return Page(items=())
        if named is None:
            sql.where.append(f"v.model_name ILIKE {sql.p(name_pattern(q))}")
        else:
            sql.where.append(f"v.model_id = ANY ({sql.p(named)}::text[])")
    direction = " DESC" if order.descending else ""
    # The page first, then the metrics of its rows only, in one round trip.
    page_query = (
        f"SELECT {select} FROM {source}{sql.clause()}"
        f" ORDER BY {', '.join(c + direction for c in columns)} LIMIT {sql.p(limit + 1)}"
    )
    records = await conn.fetch(
        f"SELECT q.*, {model_versions.metrics_column(names, 'q')} FROM ({page_query}) AS q"
        f" ORDER BY {', '.join('q.' + c + direction for c in outer)}",
        *sql.params,
    )
    page = records[:limit]
    rows = tuple(model_versions.row_from_record(r) for r in page)
    more = len(records) > limit
    return Page(
        items=rows, next_cursor=encode_cursor(tag, _version_key(order, page[-1])) if more else None
    )
