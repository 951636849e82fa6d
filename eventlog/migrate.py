"""Versioned SQL migrations: applied in order, recorded, safe when processes start at once. I/O.

Each file under ``eventlog/migrations`` and ``projections/migrations`` runs once, in its own
transaction, as the connecting (owner) role; an advisory lock per schema serialises
concurrent starts. The runner also creates the application role and grants it only what
the migrations allow (see ``eventlog.db``).

A migration is recorded under ``<prefix>/<file name>``. The event store's files moved from
``service/`` to ``eventlog/`` but keep the prefix ``service``, so databases migrated before
the move recognise them as applied.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files

import asyncpg

from eventlog.db import lock_key

# (package holding a ``migrations`` folder, prefix its files are recorded under), in order.
SOURCES = (("eventlog", "service"), ("projections", "projections"))


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    """An applied migration's file changed, or the database refused a migration."""


def discover() -> list[Migration]:
    found: list[Migration] = []
    for package, prefix in SOURCES:
        folder = files(package) / "migrations"
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".sql"):
                found.append(Migration(f"{prefix}/{entry.name}", entry.read_text("utf-8")))
    return found


_ENSURE_ROLE = """
DO $$
DECLARE r text := current_setting('modelreg.app_role');
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another registry in this cluster created it a moment ago
        END;
    END IF;
    IF NOT pg_has_role(current_user, r, 'MEMBER') THEN
        EXECUTE format('GRANT %I TO %I', r, current_user);
    END IF;
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', current_setting('modelreg.schema'));
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_setting('modelreg.schema'), r);
END $$;
"""

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text        PRIMARY KEY,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
DO $$
BEGIN
    EXECUTE format('GRANT SELECT ON schema_migrations TO %I', current_setting('modelreg.app_role'));
END $$;
"""


async def apply_migrations(url: str, *, schema: str, app_role: str) -> list[str]:
    """Apply every pending migration; return the names applied (empty when up to date)."""
    conn: asyncpg.Connection = await asyncpg.connect(url, server_settings={"jit": "off"})
    try:
        await conn.execute(
            "SELECT pg_advisory_lock(hashtextextended($1, 0))", lock_key(schema, "migrate")
        )
        await conn.execute(
            "SELECT set_config('modelreg.app_role', $1, false), set_config('modelreg.schema', $2, false)",
            app_role,
            schema,
        )
        await conn.execute(_ENSURE_ROLE)
        await conn.execute("SELECT set_config('search_path', quote_ident($1), false)", schema)
        await conn.execute(_LEDGER)
        applied = {
            r["name"]: r["checksum"]
            for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")
        }
        done: list[str] = []
        for migration in discover():
            if migration.name in applied:
                if applied[migration.name] != migration.checksum:
                    raise MigrationError(
                        f"{migration.name} changed after it was applied; add a new migration instead"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"{migration.name}: {exc}") from exc
            done.append(migration.name)
        return done
    finally:
        await conn.close()


async def pending_migrations(conn: asyncpg.Connection) -> list[str]:
    """Names of migrations this code knows that the connected schema has not applied."""
    try:
        rows = await conn.fetch("SELECT name FROM schema_migrations")
    except asyncpg.UndefinedTableError:
        return [m.name for m in discover()]
    applied = {r["name"] for r in rows}
    return [m.name for m in discover() if m.name not in applied]
