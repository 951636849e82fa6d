"""What a projection is: its tables (per generation), the events it handles, and its fold.

A view module declares a ``Projection`` whose ``fold`` is three functions:

- ``load(conn, names, events) -> rows``: I/O. Read the rows this batch touches (by the
  keys its events name) into the view's rows type; rows the batch only overwrites, never
  reads, need not be loaded.
- ``evolve(rows, events) -> rows``: pure. Fold the batch into the rows and return new
  rows: no I/O, no clock, no randomness, and the rows given are left as they were. A unit
  test calls it with no database; a rebuild and a time-travel fold produce the same rows
  as the live run because nothing else decides them. A row the batch removes stays in
  the new rows as ``None``, for ``write`` to delete.
- ``write(conn, names, loaded, evolved)``: I/O. Store what ``evolve`` changed: the rows
  of ``evolved`` that ``loaded`` lacks or holds differently (``changed``), a statement
  per table rather than per row where it can (``upsert``).

``Projection.apply(conn, names, events)`` runs load -> evolve -> write in the caller's
transaction; the runner and time travel call only that. Query functions take ``names``
too, so the same SQL serves live views, a rebuild being checked, and a fold into
temporary tables for time travel. ``Projection.checksum`` digests every table in the
order of its key: equal checksums mean equal views (rebuild equals live).

Table and index names come only from the specs in this package (validated identifiers),
never from user input; every value reaches SQL as a bound parameter.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg

from eventlog.log import LoggedEvent

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")

R = TypeVar("R")
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Table:
    """A table of a projection. ``columns`` is the body of CREATE TABLE; ``key`` its primary
    key columns (the checksum's row order); ``indexes`` are CREATE INDEX (or CREATE
    TRIGGER) statements with ``{table}`` for the table and ``{name}`` for a prefix that
    makes index names unique per generation."""

    name: str
    columns: str
    key: Sequence[str]
    indexes: Sequence[str] = ()

    def __post_init__(self) -> None:
        for identifier in (self.name, *self.key):
            if not _IDENTIFIER.match(identifier):
                raise ValueError(f"bad identifier {identifier!r} in table {self.name!r}")
        if not self.key:
            raise ValueError(f"table {self.name!r} declares no key")


class Names(Mapping[str, str]):
    """Logical table name -> the SQL name to use (a generation's table, a view, a temp table)."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self._mapping = dict(mapping)

    def __getitem__(self, key: str) -> str:
        return self._mapping[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping)

    def __len__(self) -> int:
        return len(self._mapping)

    def __getattr__(self, key: str) -> str:
        try:
            return self._mapping[key]
        except KeyError:
            raise AttributeError(key) from None


@dataclass(frozen=True, slots=True)
class Fold(Generic[R]):
    """How a view folds one batch: ``load`` (I/O), ``evolve`` (pure), ``write`` (I/O)."""

    load: Callable[[asyncpg.Connection, Names, Sequence[LoggedEvent]], Awaitable[R]]
    evolve: Callable[[R, Sequence[LoggedEvent]], R]
    write: Callable[[asyncpg.Connection, Names, R, R], Awaitable[None]]

    async def __call__(
        self, conn: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]
    ) -> None:
        loaded = await self.load(conn, names, events)
        await self.write(conn, names, loaded, self.evolve(loaded, events))


@dataclass(frozen=True, slots=True)
class Projection:
    name: str
    version: int
    tables: Sequence[Table]
    handles: frozenset[str]
    fold: Fold[Any]
    description: str = ""

    async def apply(
        self, conn: asyncpg.Connection, names: Names, events: Sequence[LoggedEvent]
    ) -> None:
        """Fold ``events`` (all of handled types, in log order) into the tables named by
        ``names``, inside the caller's transaction: load, evolve, write."""
        await self.fold(conn, names, events)

    async def checksum(self, conn: asyncpg.Connection | asyncpg.Pool, names: Names) -> str:
        """One digest per table, in table order, joined by ':': md5 over the md5 of every
        row's text in key order ('' for no rows). Hashing each row first keeps the
        aggregate small (32 bytes a row) on big tables. One statement, one snapshot."""
        digests = ", ".join(
            "(SELECT md5(coalesce(string_agg(md5(t::text), ''"
            f" ORDER BY {', '.join('t.' + column for column in table.key)}), ''))"
            f" FROM {names[table.name]} t)"
            for table in self.tables
        )
        value: str = await conn.fetchval(f"SELECT concat_ws(':', {digests})")
        return value

    def generation_names(self, generation: int) -> Names:
        return Names({t.name: f"{t.name}__g{generation}" for t in self.tables})

    def view_names(self) -> Names:
        return Names({t.name: t.name for t in self.tables})

    def temp_names(self) -> Names:
        return Names({t.name: f"{t.name}__tt" for t in self.tables})

    def create_statements(
        self,
        names: Names,
        *,
        temporary: bool = False,
        unlogged: bool = False,
        on_commit_drop: bool = True,
        lookup_indexes: bool = True,
    ) -> list[str]:
        """``lookup_indexes`` False: no plain (non-unique) index, only keys, unique indexes
        and triggers, which the fold needs; tables that are folded and copied, never
        searched, skip the indexes that only serve reads (with three GIN indexes, indexing
        a version row cost more than storing it)."""
        statements: list[str] = []
        for table in self.tables:
            sql_name = names[table.name]
            kind = "TEMP TABLE" if temporary else "UNLOGGED TABLE" if unlogged else "TABLE"
            suffix = " ON COMMIT DROP" if temporary and on_commit_drop else ""
            statements.append(f"CREATE {kind} {sql_name} ({table.columns}){suffix}")
            for index in table.indexes:
                if lookup_indexes or not index.startswith("CREATE INDEX"):
                    statements.append(index.format(table=sql_name, name=sql_name))
        return statements


_ABSENT: Any = object()


def changed(loaded: Mapping[K, V], evolved: Mapping[K, V]) -> dict[K, V]:
    """The entries of ``evolved`` that ``loaded`` lacks or holds differently: what a write
    must store. (A row ``evolve`` left alone is the same object, so the test is cheap.)"""
    if not loaded:  # a batch that only adds rows (a log view, most of a rebuild)
        return dict(evolved)
    return {
        key: row
        for key, row in evolved.items()
        if (old := loaded.get(key, _ABSENT)) is not row and old != row
    }


async def upsert(
    conn: asyncpg.Connection,
    table: str,
    columns: Sequence[tuple[str, str]],
    key: int,
    rows: Sequence[Sequence[object]],
) -> None:
    """Insert ``rows`` (values in ``columns`` order, given as (name, SQL type)), replacing
    rows with the same first ``key`` columns: one statement for any number of rows. The
    keys must be distinct (a statement may change a row only once)."""
    if not rows:
        return
    names = [name for name, _ in columns]
    params = ", ".join(f"${i + 1}::{kind}[]" for i, (_, kind) in enumerate(columns))
    updates = ", ".join(f"{name} = excluded.{name}" for name in names[key:])
    await conn.execute(
        f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM unnest({params})"
        f" ON CONFLICT ({', '.join(names[:key])}) DO UPDATE SET {updates}",
        *([row[i] for row in rows] for i in range(len(columns))),
    )
