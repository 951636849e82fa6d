"""Stage timeline: which version held each stage (and each alias) of a model, from when to when.

Answers "what was in production on 3 March at 14:03?" (``holder_at``), "what was in
production anywhere at T?" (``holders_at``) and "how did this model's stages move?"
(``timeline``).

One row per interval: a version enters a stage (``from_*``) and later leaves it (``to_*``,
NULL while it still holds it). ``model.version_registered`` opens ``development``; every
``model.stage_transitioned`` closes the interval of its ``from_stage`` and opens one in
``to_stage``. Aliases get the same treatment in ``alias_timeline``.

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

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import msgspec

from eventlog.log import LoggedEvent
from events.catalogue import CODEC
from events.model.events import AliasRemoved, AliasSet, StageTransitioned, VersionRegistered
from events.stages import INITIAL_STAGE, Stage
from events.streams import model_id_of
from projections.base import Names, Projection, Table

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
        indexes=[
            # At most one open interval per (model, stage, version): the close below relies on it.
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


# --- apply -------------------------------------------------------------------------------

# An interval row as apply builds it: leading columns (key, version), then _COLUMNS.
_Row = list[object]
_TAIL = 9  # len(_COLUMNS)
_TO_POSITION, _TO_TIME, _LEFT_BY = -_TAIL + 2, -_TAIL + 3, -1


class _Intervals:
    """Open/close bookkeeping for one interval table within a batch.

    Intervals opened in this batch stay in memory and are closed there; an interval that
    was open before the batch is closed with one set-based UPDATE before the new rows are
    inserted, so batch boundaries never change the result (rebuild equals live).
    """

    def __init__(self) -> None:
        self.new: dict[tuple[object, ...], _Row] = {}
        self.rows: list[_Row] = []
        self.closes: list[tuple[tuple[object, ...], int, datetime, str]] = []

    def open(
        self,
        key: tuple[object, ...],
        lead: tuple[object, ...],
        logged: LoggedEvent,
        kind: str,
        comment: str,
        request_id: str | None,
    ) -> None:
        envelope = logged.envelope
        row: _Row = [
            *lead,
            logged.log_position,
            envelope.occurred_at,
            None,
            None,
            envelope.actor,
            kind,
            comment,
            request_id,
            None,
        ]
        self.new[key] = row
        self.rows.append(row)

    def close(self, key: tuple[object, ...], logged: LoggedEvent) -> None:
        envelope = logged.envelope
        row = self.new.pop(key, None)
        if row is None:
            self.closes.append((key, logged.log_position, envelope.occurred_at, envelope.actor))
            return
        started = row[-_TAIL + 1]
        assert isinstance(started, datetime)
        row[_TO_POSITION] = logged.log_position
        # max(): the same clamp as the UPDATE below, so where a batch ends changes nothing.
        row[_TO_TIME] = max(started, envelope.occurred_at)
        row[_LEFT_BY] = envelope.actor


async def apply(conn: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]) -> None:
    stages = _Intervals()
    aliases = _Intervals()
    for logged in events:
        event = CODEC.decode(logged.envelope)
        model_id = model_id_of(logged.stream_id)
        match event:
            case VersionRegistered():
                key = (model_id, str(INITIAL_STAGE), event.version)
                stages.open(key, key, logged, "registered", "", None)
            case StageTransitioned():
                stages.close((model_id, str(event.from_stage), event.version), logged)
                key = (model_id, str(event.to_stage), event.version)
                stages.open(key, key, logged, str(event.kind), event.comment, event.request_id)
            case AliasSet():
                aliases.close((model_id, event.alias), logged)
                aliases.open(
                    (model_id, event.alias),
                    (model_id, event.alias, event.version),
                    logged,
                    "set",
                    event.comment,
                    event.request_id,
                )
            case AliasRemoved():
                aliases.close((model_id, event.alias), logged)
            case _:
                pass
    await _write(
        conn,
        names.stage_timeline,
        ("model_id", "stage", "version"),
        ("text", "text", "int"),
        stages,
    )
    await _write(
        conn,
        names.alias_timeline,
        ("model_id", "alias"),
        ("text", "text"),
        aliases,
        with_version=True,
    )


async def _write(
    conn: asyncpg.Connection,
    table: str,
    key: tuple[str, ...],
    key_types: tuple[str, ...],
    intervals: _Intervals,
    *,
    with_version: bool = False,
) -> None:
    if intervals.closes:
        match = " AND ".join(f"t.{k} = c.{k}" for k in key)
        unnest = ", ".join(f"${i + 1}::{kind}[]" for i, kind in enumerate(key_types))
        n = len(key)
        # GREATEST: a skewed clock must not make an interval end before it began.
        await conn.execute(
            f"UPDATE {table} t SET to_position = c.to_position, to_time = GREATEST(t.from_time, c.to_time),"
            f" left_by = c.left_by FROM unnest({unnest}, ${n + 1}::bigint[], ${n + 2}::timestamptz[], ${n + 3}::text[])"
            f" AS c({', '.join(key)}, to_position, to_time, left_by) WHERE {match} AND t.to_position IS NULL",
            *([c[0][i] for c in intervals.closes] for i in range(n)),
            [c[1] for c in intervals.closes],
            [c[2] for c in intervals.closes],
            [c[3] for c in intervals.closes],
        )
    if intervals.rows:
        columns = (*key, "version") if with_version else key
        types = (*key_types, "int") if with_version else key_types
        types += (
            "bigint",
            "timestamptz",
            "bigint",
            "timestamptz",
            "text",
            "text",
            "text",
            "text",
            "text",
        )
        width = len(columns) + _TAIL
        all_columns = f"{', '.join(columns)}, {_COLUMNS}"
        params = ", ".join(f"${i + 1}::{kind}[]" for i, kind in enumerate(types))
        await conn.execute(
            f"INSERT INTO {table} ({all_columns}) SELECT * FROM unnest({params})",
            *([row[i] for row in intervals.rows] for i in range(width)),
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
    apply=apply,
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
    conn: Conn, names: Names, model_id: str, *, stage: Stage | str | None = None
) -> list[StageInterval]:
    """Every stage interval of a model (optionally of one stage), in log order."""
    rows = await conn.fetch(
        f"SELECT model_id, stage, version, {_COLUMNS} FROM {names.stage_timeline}"
        " WHERE model_id = $1 AND ($2::text IS NULL OR stage = $2) ORDER BY from_position, stage, version",
        model_id,
        None if stage is None else str(stage),
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


async def checksum(conn: Conn, names: Names) -> str:
    """A digest of every row, in key order: equal digests mean equal views."""
    parts = []
    for table, order in (
        (names.stage_timeline, "model_id, stage, from_position, version"),
        (names.alias_timeline, "model_id, alias, from_position"),
    ):
        parts.append(
            await conn.fetchval(
                f"SELECT md5(coalesce(string_agg(md5(t::text), '' ORDER BY {order}), '')) FROM {table} t"
            )
        )
    return ":".join(parts)
