"""The reads MLflow's registry API needs, on the catalogue and versions views. I/O: Postgres.

Models and versions as MLflow shows them: what MLflow calls deleted is hidden here, as
MLflow hides it (an archived model; a deprecated version, which is what deleting a version
through the MLflow API records), and so are prompts unless a filter names their tag.

A version's MLflow ``source`` is computed, never stored twice: a version whose content is
one external artifact (what ``model-versions/create`` records from MLflow's ``source``)
answers that artifact's URI; any other version, whose files modelreg serves, answers
``mlflow-artifacts:/modelreg/models/{name}/versions/{n}``.

Searches filter with the parsed MLflow grammar (``events.mlflow_filter``) and page by
keyset over the requested order, made total with MLflow's tie breakers and the model id:
a page is "the rows after this key", so writes between pages never duplicate or skip a
row whose sort key did not change. Scopes filter in the query, before the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from events.mlflow_filter import (
    PROMPT_TAG,
    Clause,
    OrderKey,
    Target,
    describe_order,
    names_prompt_tag,
)
from events.stages import StageName
from projections.base import Names
from projections.paging import decode_cursor, encode_cursor
from projections.search import _scopes, _Sql
from projections.views import model_catalogue
from projections.views.model_catalogue import ModelRow

Conn = asyncpg.Connection | asyncpg.Pool

ARTIFACTS_URI = "mlflow-artifacts:/modelreg/models/{name}/versions/{version}"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class MlflowVersion(msgspec.Struct, frozen=True, kw_only=True):
    """A version with what MLflow shows of it; ``deleted`` ones are hidden by the API."""

    model_id: str
    name: str
    version: int
    stage: StageName
    aliases: tuple[str, ...]
    description: str
    tags: dict[str, str]
    registered_by: str
    # Microseconds since the epoch, exact: Postgres computes them with the row, as asyncpg
    # spends about a microsecond decoding each timestamp into a datetime (half the
    # decoding of a page of 100 versions) and MLflow wants milliseconds anyway.
    created_us: int
    updated_us: int
    source: str
    run_id: str
    run_link: str
    deleted: bool
    model_archived: bool = False


def millis(moment: datetime) -> int:
    """MLflow's int64 milliseconds since the epoch."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def moment_of(us: int) -> datetime:
    """The instant ``us`` microseconds after the epoch (``micros``'s inverse)."""
    return _EPOCH + timedelta(microseconds=us)


def _micros_of(column: str) -> str:
    # extract() answers numeric with the six decimals of a timestamp: the product is exact.
    return f"(extract(epoch FROM {column}) * 1000000)::bigint"


def _millis_of(column: str) -> str:
    return f"floor(extract(epoch FROM {column}) * 1000)::bigint"


def _source(v: str) -> str:
    """``events.mlflow_artifacts.mlflow_source`` of the row aliased ``v``."""
    return (
        f"coalesce({v}.external_source,"
        f" 'mlflow-artifacts:/modelreg/models/' || {v}.model_name || '/versions/' || {v}.version)"
    )


def _version_columns(v: str = "v") -> str:
    return (
        f"{v}.model_id, {v}.model_name, {v}.version, {v}.stage, {v}.aliases, {v}.description,"
        f" {v}.tags, {v}.registered_by, {v}.deprecated, {v}.model_archived,"
        f" {_micros_of(f'{v}.created_at')} AS created_us,"
        f" {_micros_of(f'{v}.updated_at')} AS updated_us,"
        f" {_source(v)} AS source, {v}.run_id, {v}.run_url AS run_link"
    )


def _version(r: asyncpg.Record) -> MlflowVersion:
    tags = r["tags"]
    return MlflowVersion(
        model_id=r["model_id"],
        name=r["model_name"],
        version=r["version"],
        stage=r["stage"],
        aliases=tuple(sorted(r["aliases"])),
        description=r["description"],
        tags=msgspec.json.decode(tags) if isinstance(tags, str | bytes) else dict(tags),
        registered_by=r["registered_by"],
        created_us=r["created_us"],
        updated_us=r["updated_us"],
        source=r["source"],
        run_id=r["run_id"],
        run_link=r["run_link"],
        deleted=r["deprecated"],
        model_archived=r["model_archived"],
    )


# --- single reads -------------------------------------------------------------------------


def version_query(names: Names, model: str, first: int) -> str:
    """One version by number: the model's id is the SQL expression ``model``, the number
    ``$first`` (the form ``service.api.common.FirstRead`` renders)."""
    return (
        f"SELECT {_version_columns()} FROM {names.model_versions} v"
        f" WHERE v.model_id = {model} AND v.version = ${first}"
    )


def alias_query(names: Names, model: str, first: int) -> str:
    """The version the alias ``$first`` points at (as ``version_query``)."""
    return (
        f"SELECT {_version_columns()} FROM {names.model_versions} v"
        f" WHERE v.model_id = {model} AND v.aliases @> ARRAY[${first}]::text[]"
    )


def highest_live_query(names: Names, model: str, first: int) -> str:
    """The highest version not deleted: what MLflow's reserved alias ``latest`` names (as
    ``version_query``; ``first`` numbers no parameter here)."""
    return (
        f"SELECT {_version_columns()} FROM {names.model_versions} v"
        f" WHERE v.model_id = {model} AND NOT v.deprecated ORDER BY v.version DESC LIMIT 1"
    )


def version_of(record: asyncpg.Record | None) -> MlflowVersion | None:
    """The version a record of the queries above holds."""
    return None if record is None else _version(record)


async def get_version(
    conn: Conn, names: Names, model_id: str, version: int
) -> MlflowVersion | None:
    return version_of(await conn.fetchrow(version_query(names, "$1", 2), model_id, version))


async def version_by_alias(
    conn: Conn, names: Names, model_id: str, alias: str
) -> MlflowVersion | None:
    return version_of(await conn.fetchrow(alias_query(names, "$1", 2), model_id, alias))


async def highest_live_version(conn: Conn, names: Names, model_id: str) -> MlflowVersion | None:
    return version_of(await conn.fetchrow(highest_live_query(names, "$1", 2), model_id))


async def latest_versions(
    conn: Conn, names: Names, model_ids: Sequence[str]
) -> dict[str, list[MlflowVersion]]:
    """The highest live version in each stage of each model (MLflow's ``latest_versions``)."""
    if not model_ids:
        return {}
    # The winners are found on the index of live versions by (model, stage, version): a
    # skip to each next stage (a recursive step), then one step back to its highest version;
    # only they are read whole. DISTINCT ON over every version sorted them all: 1.5 ms of
    # Postgres for a model of 500 versions.
    table = names.model_versions
    records = await conn.fetch(
        "WITH RECURSIVE stages(model_id, stage) AS ("
        f" SELECT m.model_id, (SELECT x.stage FROM {table} x"
        "   WHERE x.model_id = m.model_id AND NOT x.deprecated ORDER BY x.stage LIMIT 1)"
        "  FROM (SELECT DISTINCT u.model_id FROM unnest($1::text[]) AS u(model_id)) m"
        " UNION ALL"
        f" SELECT s.model_id, (SELECT x.stage FROM {table} x"
        "   WHERE x.model_id = s.model_id AND NOT x.deprecated AND x.stage > s.stage"
        "   ORDER BY x.stage LIMIT 1)"
        "  FROM stages s WHERE s.stage IS NOT NULL"
        f") SELECT {_version_columns()} FROM stages s"
        # The winner's row is read in the lateral step itself: joined again by its key,
        # a planner without statistics (a fresh or never analysed table) hashed every
        # version of the model against the stages first (2.8 ms against 0.4 for 120).
        f" CROSS JOIN LATERAL (SELECT x.* FROM {table} x"
        "   WHERE x.model_id = s.model_id AND x.stage = s.stage AND NOT x.deprecated"
        "   ORDER BY x.version DESC LIMIT 1) v"
        " WHERE s.stage IS NOT NULL",
        list(model_ids),
    )
    found: dict[str, list[MlflowVersion]] = {m: [] for m in model_ids}
    for record in records:
        found[record["model_id"]].append(_version(record))
    for versions in found.values():
        versions.sort(key=lambda v: v.version)
    return found


# --- searches -------------------------------------------------------------------------------

_MODEL_COLUMNS: dict[str, tuple[str, Any]] = {
    "name": ("c.name", str),
    "creation_timestamp": ("c.created_at", datetime),
    "last_updated_timestamp": ("c.updated_at", datetime),
}
_VERSION_COLUMNS: dict[str, tuple[str, Any]] = {
    "name": ("v.model_name", str),
    "version_number": ("v.version", int),
    "creation_timestamp": ("v.created_at", datetime),
    "last_updated_timestamp": ("v.updated_at", datetime),
}
_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


class SearchPage(msgspec.Struct, frozen=True, kw_only=True):
    items: tuple[Any, ...]
    next_cursor: str | None = None


def _compare(sql: _Sql, column: str, clause: Clause, *, numeric: bool = False) -> str:
    value = clause.value
    op = clause.comparator
    if op in ("IN", "NOT IN"):
        condition = f"{column} = ANY ({sql.p(list(value))}::text[])"  # type: ignore[arg-type]
        return f"NOT ({condition})" if op == "NOT IN" else condition
    if op in ("LIKE", "ILIKE"):
        return f"{column} {op} {sql.p(value)}"
    cast = "::bigint" if numeric else "::text"
    return f"{column} {_OPS[op]} {sql.p(value)}{cast}"


def _tag_condition(sql: _Sql, tags: str, clause: Clause) -> str:
    key = sql.p(clause.key)
    lhs = f"({tags}->>{key})"
    if clause.key == PROMPT_TAG:
        # MLflow counts a model without the prompt tag as a non-prompt: "= 'false'" and
        # "!= 'true'" match it.
        lhs = f"coalesce({lhs}, 'false')"
    return _compare(sql, lhs, clause)


def _clauses(sql: _Sql, clauses: Sequence[Clause], columns: dict[str, str], tags: str) -> None:
    for clause in clauses:
        if clause.kind == "tag":
            sql.where.append(_tag_condition(sql, tags, clause))
        elif clause.key in ("creation_timestamp", "last_updated_timestamp"):
            column = _millis_of(columns[clause.key])
            sql.where.append(_compare(sql, column, clause, numeric=True))
        else:
            numeric = clause.key == "version_number"
            sql.where.append(_compare(sql, columns[clause.key], clause, numeric=numeric))


def _hide_prompts(sql: _Sql, tags: str, clauses: Sequence[Clause]) -> None:
    if not names_prompt_tag(tuple(clauses)):
        sql.where.append(
            f"NOT ({tags} @> {sql.p(msgspec.json.encode({PROMPT_TAG: 'true'}).decode())}::jsonb)"
        )


def _keyset(sql: _Sql, columns: Sequence[tuple[str, bool]], key: Sequence[Any]) -> None:
    """Rows after ``key`` in an order of mixed directions: for some i, the first i-1
    columns equal the key's and the i-th is past it in its own direction."""
    ors: list[str] = []
    for i, (column, ascending) in enumerate(columns):
        equal = [f"{c} = {sql.p(k)}" for (c, _), k in zip(columns[:i], key[:i], strict=True)]
        past = f"{column} {'>' if ascending else '<'} {sql.p(key[i])}"
        ors.append("(" + " AND ".join([*equal, past]) + ")")
    sql.where.append("(" + " OR ".join(ors) + ")")


def _order(
    order: Sequence[OrderKey], table: dict[str, tuple[str, Any]], id_column: str
) -> tuple[list[tuple[str, bool]], list[Any]]:
    columns = [(table[k.key][0], k.ascending) for k in order] + [(id_column, True)]
    types = [table[k.key][1] for k in order] + [str]
    return columns, types


def _cursor_tag(target: Target, order: Sequence[OrderKey], filter_text: str) -> str:
    # A token is bound to its query: sent with another order or filter, it is refused.
    return f"mlflow-{target}:{describe_order(tuple(order))}:{filter_text}"


async def search_models(
    conn: Conn,
    names: Names,
    *,
    clauses: Sequence[Clause],
    filter_text: str,
    order: Sequence[OrderKey],
    limit: int,
    cursor: str | None,
    scopes: tuple[str, ...],
) -> SearchPage:
    """Live models matching every clause, one page in ``order`` (already made total)."""
    columns, types = _order(order, _MODEL_COLUMNS, "c.model_id")
    sql = _Sql()
    sql.where.append("NOT c.archived")
    _scopes(sql, "c.name", scopes)
    _clauses(sql, clauses, {k: c for k, (c, _) in _MODEL_COLUMNS.items()}, "c.tags")
    _hide_prompts(sql, "c.tags", clauses)
    tag = _cursor_tag(Target.MODELS, order, filter_text)
    if cursor:
        _keyset(sql, columns, decode_cursor(cursor, tag, tuple.__class_getitem__(tuple(types))))
    records = await conn.fetch(
        f"SELECT {model_catalogue.columns('c')} FROM {names.model_catalogue} c{sql.clause()}"
        f" ORDER BY {', '.join(c + ('' if asc else ' DESC') for c, asc in columns)}"
        f" LIMIT {sql.p(limit + 1)}",
        *sql.params,
    )
    rows = tuple(model_catalogue.row_from_record(r) for r in records[:limit])
    more = len(records) > limit
    return SearchPage(
        items=rows, next_cursor=encode_cursor(tag, _model_key(order, rows[-1])) if more else None
    )


def _model_key(order: Sequence[OrderKey], row: ModelRow) -> tuple[Any, ...]:
    values = {
        "name": row.name,
        "creation_timestamp": row.created_at,
        "last_updated_timestamp": row.updated_at,
    }
    return (*(values[k.key] for k in order), row.model_id)


async def search_versions(
    conn: Conn,
    names: Names,
    *,
    clauses: Sequence[Clause],
    filter_text: str,
    order: Sequence[OrderKey],
    limit: int,
    cursor: str | None,
    scopes: tuple[str, ...],
) -> SearchPage:
    """Live versions of live models matching every clause, one page in ``order``: each as
    MLflow's JSON of it (``msgspec.Raw``), which the view keeps rendered (``mlflow_json``)."""
    columns, types = _order(order, _VERSION_COLUMNS, "v.model_id")
    sql = _Sql()
    sql.where.append("NOT v.deprecated AND NOT v.model_archived")
    _scopes(sql, "v.model_name", scopes)
    attribute_columns = {k: c for k, (c, _) in _VERSION_COLUMNS.items()}
    attribute_columns |= {
        "run_id": "v.run_id",
        "source_path": f"({_source('v')})",
    }
    _clauses(sql, clauses, attribute_columns, "v.tags")
    _hide_prompts(sql, "v.tags", clauses)
    tag = _cursor_tag(Target.VERSIONS, order, filter_text)
    if cursor:
        _keyset(sql, columns, decode_cursor(cursor, tag, tuple.__class_getitem__(tuple(types))))
    records = await conn.fetch(
        f"SELECT v.mlflow_json, {_KEY_COLUMNS} FROM {names.model_versions} v{sql.clause()}"
        f" ORDER BY {', '.join(c + ('' if asc else ' DESC') for c, asc in columns)}"
        f" LIMIT {sql.p(limit + 1)}",
        *sql.params,
    )
    page = records[:limit]
    more = len(records) > limit
    return SearchPage(
        items=tuple(msgspec.Raw(r["mlflow_json"].encode()) for r in page),
        next_cursor=encode_cursor(tag, _version_key(order, page[-1])) if more else None,
    )


# What a page's cursor is built from (``_version_key``).
_KEY_COLUMNS = (
    "v.model_id, v.model_name, v.version,"
    f" {_micros_of('v.created_at')} AS created_us, {_micros_of('v.updated_at')} AS updated_us"
)


def _version_key(order: Sequence[OrderKey], record: asyncpg.Record) -> tuple[Any, ...]:
    values: dict[str, Any] = {
        "name": record["model_name"],
        "version_number": record["version"],
        "creation_timestamp": moment_of(record["created_us"]),
        "last_updated_timestamp": moment_of(record["updated_us"]),
    }
    return (*(values[k.key] for k in order), record["model_id"])
