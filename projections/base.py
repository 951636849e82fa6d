"""What a projection is: tables (per generation), the events it handles, and ``apply``.

A projection module declares:

- ``tables``: its tables as ``Table`` specs; their SQL names carry the generation
  (``model_catalogue__g3``) and a view with the plain name points at the live one;
- ``handles``: the event types it reads (others never reach it);
- ``apply(conn, names, events)``: fold a batch into the tables named by ``names``, in
  the caller's transaction, deterministically (no clock, no randomness) so a rebuild and
  a time-travel fold produce the same rows as the live run;
- query functions that take ``names`` too, so the same SQL serves live views, a rebuild
  being checked, and a fold into temporary tables for time travel.

Table and index names come only from the specs in this package (validated identifiers),
never from user input; every value reaches SQL as a bound parameter.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg

from eventlog.log import LoggedEvent

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


@dataclass(frozen=True, slots=True)
class Table:
    """A table of a projection. ``columns`` is the body of CREATE TABLE; ``indexes`` are
    CREATE INDEX statements with ``{table}`` for the table and ``{name}`` for a prefix
    that makes index names unique per generation."""

    name: str
    columns: str
    indexes: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not _IDENTIFIER.match(self.name):
            raise ValueError(f"bad table name {self.name!r}")


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


Apply = Callable[[asyncpg.Connection, Names, Sequence[LoggedEvent]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Projection:
    name: str
    version: int
    tables: Sequence[Table]
    handles: frozenset[str]
    apply: Apply
    description: str = ""
    # Tables whose rows a checksum compares (rebuild equals live); all tables by default.
    checksum_order: Mapping[str, str] = field(default_factory=dict)

    def generation_names(self, generation: int) -> Names:
        return Names({t.name: f"{t.name}__g{generation}" for t in self.tables})

    def view_names(self) -> Names:
        return Names({t.name: t.name for t in self.tables})

    def temp_names(self) -> Names:
        return Names({t.name: f"{t.name}__tt" for t in self.tables})

    def create_statements(
        self, names: Names, *, temporary: bool = False, unlogged: bool = False
    ) -> list[str]:
        statements: list[str] = []
        for table in self.tables:
            sql_name = names[table.name]
            kind = "TEMP TABLE" if temporary else "UNLOGGED TABLE" if unlogged else "TABLE"
            suffix = " ON COMMIT DROP" if temporary else ""
            statements.append(f"CREATE {kind} {sql_name} ({table.columns}){suffix}")
            for index in table.indexes:
                statements.append(index.format(table=sql_name, name=sql_name))
        return statements
