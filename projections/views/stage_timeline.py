"""Stage timeline: which version held each stage (and each alias) of a model, from when to when.

Answers "what was in production on 3 March at 14:03?" (``holder_at``), "what was in
production anywhere at T?" (``holders_at``) and "how did this model's stages move?"
(``timeline``).

One row per interval: a version enters a stage (``from_*``) and later leaves it (``to_*``,
NULL while it still holds it). ``model.version_registered`` opens ``development``; every
``model.stage_transitioned`` closes the interval of its ``from_stage`` and opens one in
``to_stage``. Aliases get the same treatment in ``alias_timeline``.

A stage with environments has, besides the stage's own interval (open while the version is
in the stage in any environment), one interval per environment, named ``stage@environment``
(``production@eu``): "what was in production in eu at T?" is ``holder_at(...,
"production@eu", T)``. A version that leaves one environment and stays in others closes
only that environment's interval; one that leaves the stage closes them all.

Two clocks, on purpose:

- *business time* (``from_time``/``to_time``) is the envelope's ``occurred_at``: the moment
  the registry decided the change (the API's clock when the command ran). Questions about
  the world ("what served on 3 March at 14:03?") use it: pass a ``datetime`` as ``at``.
- *log position* (``from_position``/``to_position``) is the order of the sealed log, which
  is exact and total. Audit and time travel use it: pass an ``int`` as ``at``. A
  ``sealed_at`` time (when the log recorded the change) maps to a position with
  ``eventlog.log.position_at``; use that to ask "what did the registry *know* at T?".

The two orders agree except when API replicas' clocks disagree; ``holder_at`` then still
returns one version (the one that entered last in log order) and a position never lies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import msgspec
from msgspec.structs import replace

from eventlog.log import LoggedEvent
from events.catalogue import CODEC
from events.model.events import AliasRemoved, AliasSet, StageTransitioned, VersionRegistered
from events.stages import Stage, placement
from events.streams import model_id_of
from projections.base import Fold, Names, Projection, Table, changed

Conn = asyncpg.Connection | asyncpg.Pool

_INTERVAL_COLUMNS = """
    from_position bigint      NOT NULL,
    from_time     timestamptz NOT NULL,
    to_position   bigint,
    to_time       timestamptz,
    entered_by    text        NOT NULL,
    kind          text        NOT NULL,
    comment       text        NOT NULL,
    request_id    text,
    left_by       text
"""

TABLES = [
    Table(
        "stage_timeline",
        "model_id text NOT NULL, stage text NOT NULL, version int NOT NULL,"
        + _INTERVAL_COLUMNS
        + ", PRIMARY KEY (model_id, stage, from_position, version)",
        key=("model_id", "stage", "from_position", "version"),
        indexes=[
            # At most one open interval per (model, stage, version): the fold relies on it.
            "CREATE UNIQUE INDEX {name}_open ON {table} (model_id, stage, version) WHERE to_position IS NULL",
            "CREATE INDEX {name}_stage_time ON {table} (stage, from_time)",
            "CREATE INDEX {name}_version ON {table} (model_id, version, from_position)",
        ],
    ),
    Table(
        "alias_timeline",
        "model_id text NOT NULL, alias text NOT NULL, version int NOT NULL,"
        + _INTERVAL_COLUMNS
        + ", PRIMARY KEY (model_id, alias, from_position)",
        key=("model_id", "alias", "from_position"),
        indexes=[
            "CREATE UNIQUE INDEX {name}_open ON {table} (model_id, alias) WHERE to_position IS NULL"
        ],
    ),
]

_COLUMNS = (
    "from_position, from_time, to_position, to_time, entered_by, kind, comment, request_id, left_by"
)


class StageInterval(msgspec.Struct, frozen=True, kw_only=True):
    """``version`` of ``model_id`` held ``stage`` from ``from_*`` until ``to_*`` (None: still)."""

    model_id: str
    stage: str
    version: int
    from_position: int
    from_time: datetime
    to_position: int | None
    to_time: datetime | None
    entered_by: str
    kind: str
    comment: str
    request_id: str | None
    left_by: str | None


class AliasInterval(msgspec.Struct, frozen=True, kw_only=True):
    model_id: str
    alias: str
    version: int
    from_position: int
    from_time: datetime
    to_position: int | None
    to_time: datetime | None
    entered_by: str
    kind: str
    comment: str
    request_id: str | None
    left_by: str | None


# --- the fold ----------------------------------------------------------------------------

# Intervals by primary key: (model_id, stage, from_position, version) and
# (model_id, alias, from_position).
StageKey = tuple[str, str, int, int]
AliasKey = tuple[str, str, int]
IntervalT = TypeVar("IntervalT", StageInterval, AliasInterval)


@dataclass(frozen=True, slots=True)
class TimelineRows:
    """The intervals a batch touches: the open ones it may close, and the ones it opens."""

    stages: dict[StageKey, StageInterval] = field(default_factory=dict)
    aliases: dict[AliasKey, AliasInterval] = field(default_factory=dict)


def evolve(rows: TimelineRows, events: Sequence[LoggedEvent]) -> TimelineRows:
    """Close the interval a version or alias leaves and open the one it enters. Pure."""
    stages = dict(rows.stages)
    aliases = dict(rows.aliases)
    # The open interval of each (model, stage, version) and (model, alias): at most one.
    open_stages = {
        (i.model_id, i.stage, i.version): k for k, i in stages.items() if i.to_position is None
    }
    open_aliases = {(i.model_id, i.alias): k for k, i in aliases.items() if i.to_position is None}
    # The open stage@environment intervals (few): what leaving a stage must close too.
    placed = {h for h in open_stages if "@" in h[1]}
    for logged in events:
        event = CODEC.decode(logged.envelope)
        model_id = model_id_of(logged.stream_id)
        match event:
            case VersionRegistered():
                entered = _stage_entered(model_id, event.initial_stage(), event.version, logged)
                _open(stages, open_stages, entered)
            case StageTransitioned():
                _transitioned(stages, open_stages, placed, model_id, event, logged)
            case AliasSet():
                _close(aliases, open_aliases, (model_id, event.alias), logged)
                _open(aliases, open_aliases, _alias_set(model_id, event, logged))
            case AliasRemoved():
                _close(aliases, open_aliases, (model_id, event.alias), logged)
            case _:
                pass
    return TimelineRows(stages=stages, aliases=aliases)


def _transitioned(
    stages: dict[StageKey, StageInterval],
    open_stages: dict[tuple[str, str, int], StageKey],
    placed: set[tuple[str, str, int]],
    model_id: str,
    event: StageTransitioned,
    logged: LoggedEvent,
) -> None:
    version, source, target = event.version, str(event.from_stage), str(event.to_stage)
    entered, left = event.entered_environment(), event.left_environment()
    if source != target:
        # Leaving the stage leaves every environment of it (the intervals named source@...).
        _close(stages, open_stages, (model_id, source, version), logged)
        for holder in [
            h for h in placed if h[2] == version and h[0] == model_id and _of(h[1], source)
        ]:
            _close(stages, open_stages, holder, logged)
            placed.discard(holder)
        _open(stages, open_stages, _stage_entered(model_id, target, version, logged, event))
    elif left is not None:
        holder = (model_id, placement(source, left), version)
        _close(stages, open_stages, holder, logged)
        placed.discard(holder)
    if entered is not None:
        where = placement(target, entered)
        _open(stages, open_stages, _stage_entered(model_id, where, version, logged, event))
        placed.add((model_id, where, version))


def _of(interval_stage: str, stage: str) -> bool:
    return interval_stage.startswith(f"{stage}@")


def _open(rows: dict[Any, IntervalT], open_by: dict[Any, Any], interval: IntervalT) -> None:
    if isinstance(interval, StageInterval):
        key: tuple[object, ...] = (
            interval.model_id,
            interval.stage,
            interval.from_position,
            interval.version,
        )
        open_by[(interval.model_id, interval.stage, interval.version)] = key
    else:
        key = (interval.model_id, interval.alias, interval.from_position)
        open_by[(interval.model_id, interval.alias)] = key
    rows[key] = interval


def _close(
    rows: dict[Any, IntervalT],
    open_by: dict[Any, Any],
    holder: tuple[object, ...],
    logged: LoggedEvent,
) -> None:
    key = open_by.pop(holder, None)
    if key is None:
        return
    interval = rows[key]
    rows[key] = replace(
        interval,
        to_position=logged.log_position,
        # A skewed clock must not make an interval end before it began.
        to_time=max(interval.from_time, logged.envelope.occurred_at),
        left_by=logged.envelope.actor,
    )


def _stage_entered(
    model_id: str,
    stage: str,
    version: int,
    logged: LoggedEvent,
    transition: StageTransitioned | None = None,
) -> StageInterval:
    return StageInterval(
        model_id=model_id,
        stage=stage,
        version=version,
        from_position=logged.log_position,
        from_time=logged.envelope.occurred_at,
        to_position=None,
        to_time=None,
        entered_by=logged.envelope.actor,
        kind="registered" if transition is None else str(transition.kind),
        comment="" if transition is None else transition.comment,
        request_id=None if transition is None else transition.request_id,
        left_by=None,
    )


def _alias_set(model_id: str, event: AliasSet, logged: LoggedEvent) -> AliasInterval:
    return AliasInterval(
        model_id=model_id,
        alias=event.alias,
        version=event.version,
        from_position=logged.log_position,
        from_time=logged.envelope.occurred_at,
        to_position=None,
        to_time=None,
        entered_by=logged.envelope.actor,
        kind="set",
        comment=event.comment,
        request_id=event.request_id,
        left_by=None,
    )


# --- load and write ------------------------------------------------------------------------


async def load(
    conn: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]
) -> TimelineRows:
    """The open intervals the batch may close: every open interval of a version it moves
    (its stage's and those of the stage's environments)."""
    stage_keys: set[tuple[str, int]] = set()
    alias_keys: set[tuple[str, str]] = set()
    for logged in events:
        if logged.event_type not in _CLOSING:
            continue
        event = CODEC.decode(logged.envelope)
        model_id = model_id_of(logged.stream_id)
        if isinstance(event, StageTransitioned):
            stage_keys.add((model_id, event.version))
        elif isinstance(event, AliasSet | AliasRemoved):
            alias_keys.add((model_id, event.alias))
    rows = TimelineRows()
    for record in await _open_stage_intervals(conn, names.stage_timeline, stage_keys):
        interval = StageInterval(**dict(record))
        rows.stages[
            (interval.model_id, interval.stage, interval.from_position, interval.version)
        ] = interval
    for record in await _open_intervals(conn, names.alias_timeline, "alias", alias_keys):
        alias = AliasInterval(**dict(record))
        rows.aliases[(alias.model_id, alias.alias, alias.from_position)] = alias
    return rows


_CLOSING = frozenset({StageTransitioned.event_type, AliasSet.event_type, AliasRemoved.event_type})


async def _open_stage_intervals(
    conn: asyncpg.Connection, table: str, versions: set[tuple[str, int]]
) -> list[asyncpg.Record]:
    if not versions:
        return []
    ordered = sorted(versions)
    return await conn.fetch(
        f"SELECT t.model_id, t.stage, t.version, {_COLUMNS}"
        f" FROM {table} t JOIN unnest($1::text[], $2::int[]) AS k(model_id, version)"
        " ON t.model_id = k.model_id AND t.version = k.version WHERE t.to_position IS NULL",
        [m for m, _ in ordered],
        [v for _, v in ordered],
    )


async def _open_intervals(
    conn: asyncpg.Connection,
    table: str,
    holds: str,
    holders: set[tuple[str, str, int]] | set[tuple[str, str]],
) -> list[asyncpg.Record]:
    """The open intervals of ``holders``: (model_id, stage, version) or (model_id, alias)."""
    if not holders:
        return []
    ordered = sorted(holders)
    with_version = len(ordered[0]) == 3
    key = ("model_id", holds, "version") if with_version else ("model_id", holds)
    types = ("text", "text", "int")[: len(key)]
    return await conn.fetch(
        f"SELECT t.model_id, t.{holds}, t.version, {_COLUMNS}"
        f" FROM {table} t JOIN unnest({', '.join(f'${n + 1}::{kind}[]' for n, kind in enumerate(types))})"
        f" AS k({', '.join(key)}) ON {' AND '.join(f't.{c} = k.{c}' for c in key)}"
        " WHERE t.to_position IS NULL",
        *([h[n] for h in ordered] for n in range(len(key))),
    )


async def write(
    conn: asyncpg.Connection, names: Names, loaded: TimelineRows, evolved: TimelineRows
) -> None:
    await _write_intervals(conn, names.stage_timeline, TABLES[0], loaded.stages, evolved.stages)
    await _write_intervals(conn, names.alias_timeline, TABLES[1], loaded.aliases, evolved.aliases)


_SQL_TYPES = {
    "model_id": "text",
    "stage": "text",
    "alias": "text",
    "version": "int",
    "from_position": "bigint",
    "from_time": "timestamptz",
    "to_position": "bigint",
    "to_time": "timestamptz",
    "entered_by": "text",
    "kind": "text",
    "comment": "text",
    "request_id": "text",
    "left_by": "text",
}


async def _write_intervals(
    conn: asyncpg.Connection,
    sql_name: str,
    table: Table,
    loaded: Mapping[Any, StageInterval | AliasInterval],
    evolved: Mapping[Any, StageInterval | AliasInterval],
) -> None:
    """Close the loaded intervals the batch closed, then insert the ones it opened (in that
    order: a holder's new open interval must not meet its old one still open)."""
    written = changed(loaded, evolved)
    closed = [i for k, i in written.items() if k in loaded]
    opened = [i for k, i in written.items() if k not in loaded]
    if closed:
        values = (*table.key, "to_position", "to_time", "left_by")
        await conn.execute(
            f"UPDATE {sql_name} t SET to_position = c.to_position, to_time = c.to_time, left_by = c.left_by"
            f" FROM unnest({', '.join(f'${n + 1}::{_SQL_TYPES[c]}[]' for n, c in enumerate(values))})"
            f" AS c({', '.join(values)}) WHERE {' AND '.join(f't.{c} = c.{c}' for c in table.key)}",
            *([getattr(i, c) for i in closed] for c in values),
        )
    if opened:
        # The names only: structs.fields() resolves every annotation again on each call.
        column_names = list(type(opened[0]).__struct_fields__)
        await conn.execute(
            f"INSERT INTO {sql_name} ({', '.join(column_names)})"
            f" SELECT * FROM unnest({', '.join(f'${n + 1}::{_SQL_TYPES[c]}[]' for n, c in enumerate(column_names))})",
            *([getattr(i, c) for i in opened] for c in column_names),
        )


PROJECTION = Projection(
    name="stage_timeline",
    version=1,
    tables=TABLES,
    handles=frozenset(
        {
            VersionRegistered.event_type,
            StageTransitioned.event_type,
            AliasSet.event_type,
            AliasRemoved.event_type,
        }
    ),
    fold=Fold(load=load, evolve=evolve, write=write),
    description="which version held each stage and alias of a model, from when to when",
)


# --- queries ------------------------------------------------------------------------------


def _at_clause(at: datetime | int, first: int) -> tuple[str, object]:
    """The interval contains ``at``: business time for a datetime, log position for an int."""
    if isinstance(at, datetime):
        return f"from_time <= ${first} AND (to_time IS NULL OR to_time > ${first})", at
    return f"from_position <= ${first} AND (to_position IS NULL OR to_position > ${first})", at


def _stage(row: asyncpg.Record) -> StageInterval:
    return StageInterval(**dict(row))


def _alias(row: asyncpg.Record) -> AliasInterval:
    return AliasInterval(**dict(row))


async def timeline(
    conn: Conn,
    names: Names,
    model_id: str,
    *,
    stage: Stage | str | Sequence[Stage | str] | None = None,
) -> list[StageInterval]:
    """Every stage interval of a model (optionally of one stage or some), in log order."""
    stages = [stage] if isinstance(stage, str) else stage
    rows = await conn.fetch(
        f"SELECT model_id, stage, version, {_COLUMNS} FROM {names.stage_timeline}"
        " WHERE model_id = $1 AND ($2::text[] IS NULL OR stage = ANY ($2::text[]))"
        " ORDER BY from_position, stage, version",
        model_id,
        None if stages is None else [str(s) for s in stages],
    )
    return [_stage(r) for r in rows]


async def holders_at(
    conn: Conn, names: Names, stage: Stage | str, at: datetime | int, *, model_id: str | None = None
) -> list[StageInterval]:
    """The versions in ``stage`` at ``at`` (business time or log position), for one model or all."""
    clause, value = _at_clause(at, 3)
    rows = await conn.fetch(
        f"SELECT model_id, stage, version, {_COLUMNS} FROM {names.stage_timeline}"
        f" WHERE stage = $1 AND ($2::text IS NULL OR model_id = $2) AND {clause}"
        " ORDER BY model_id, from_position DESC, version",
        str(stage),
        model_id,
        value,
    )
    return [_stage(r) for r in rows]


async def holder_at(
    conn: Conn, names: Names, model_id: str, stage: Stage | str, at: datetime | int
) -> StageInterval | None:
    """The version of ``model_id`` in ``stage`` at ``at``; for a stage that several versions
    can share (staging), the one that entered it last."""
    found = await holders_at(conn, names, stage, at, model_id=model_id)
    return found[0] if found else None


async def alias_timeline(
    conn: Conn, names: Names, model_id: str, *, alias: str | None = None
) -> list[AliasInterval]:
    rows = await conn.fetch(
        f"SELECT model_id, alias, version, {_COLUMNS} FROM {names.alias_timeline}"
        " WHERE model_id = $1 AND ($2::text IS NULL OR alias = $2) ORDER BY from_position, alias",
        model_id,
        alias,
    )
    return [_alias(r) for r in rows]


async def alias_holder_at(
    conn: Conn, names: Names, model_id: str, alias: str, at: datetime | int
) -> AliasInterval | None:
    """The version ``alias`` pointed at, at ``at`` (business time or log position)."""
    clause, value = _at_clause(at, 3)
    row = await conn.fetchrow(
        f"SELECT model_id, alias, version, {_COLUMNS} FROM {names.alias_timeline}"
        f" WHERE model_id = $1 AND alias = $2 AND {clause} ORDER BY from_position DESC LIMIT 1",
        model_id,
        alias,
        value,
    )
    return None if row is None else _alias(row)


async def current_holdings(
    conn: Conn, names: Names, *, model_id: str | None = None
) -> list[StageInterval]:
    """Every open stage interval: where each version is now (in these tables' terms)."""
    rows = await conn.fetch(
        f"SELECT model_id, stage, version, {_COLUMNS} FROM {names.stage_timeline}"
        " WHERE to_position IS NULL AND ($1::text IS NULL OR model_id = $1) ORDER BY model_id, version",
        model_id,
    )
    return [_stage(r) for r in rows]


async def current_aliases(
    conn: Conn, names: Names, *, model_id: str | None = None
) -> list[AliasInterval]:
    rows = await conn.fetch(
        f"SELECT model_id, alias, version, {_COLUMNS} FROM {names.alias_timeline}"
        " WHERE to_position IS NULL AND ($1::text IS NULL OR model_id = $1) ORDER BY model_id, alias",
        model_id,
    )
    return [_alias(r) for r in rows]
