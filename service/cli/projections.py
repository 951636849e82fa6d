"""``modelreg projections``: the state of the read models, and rebuilding them. I/O: terminal, Postgres.

    modelreg projections status [--json]
    modelreg projections rebuild NAME... | --all

``rebuild`` creates a new generation (fresh tables, position 0) while the live one keeps
serving, shows a progress bar with events/s and ETA while it catches up, and returns once
the views have switched to it. It also drops the rebuilt views' time-travel snapshots
(``projections.snapshots``): the snapshot worker takes them again from the log, so a fold
fixed without a version bump cannot live on in them. If a worker (``modelreg serve``) leads the projection, it
does the work and this command watches; otherwise this command takes the projection's
lock and does the work itself.

With no ``MODELREG_DATABASE_URL`` the registry's embedded Postgres is used: the one a
running ``modelreg serve`` started under the data dir, or else the data dir's cluster
started for the duration of the command; never a new one (``service.cli.database``,
shared with ``modelreg audit verify``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
)
from rich.table import Table
from rich.text import Text

from eventlog.leadership import give_up, try_hold
from eventlog.log import head_position
from projections.base import Projection
from projections.registry_state import all_projections
from projections.runner import (
    Status,
    ensure_projection,
    generations,
    projection_lock_key,
    projection_status,
    start_rebuild,
    step,
)
from projections.snapshots import drop_snapshots
from service.cli.database import CliError, Connect, fail, run_with_database, running_embedded_url
from service.cli.help import command_group
from service.cli.output import output, table
from service.settings import Settings, SettingsError, load_settings

app = command_group("Read models: their position and lag, and rebuilding them from the log.")

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data dir of the local `modelreg serve` (env MODELREG_DATA_DIR); "
        "MODELREG_DATABASE_URL wins.",
    ),
]
POLL_SECONDS = 0.25

# Re-exported: the database plumbing moved to service.cli.database, shared with `modelreg audit`.
__all__ = ["CliError", "Connect", "app", "running_embedded_url", "status_rows"]


# ---------------------------------------------------------------- status


@dataclass(frozen=True, slots=True)
class StatusRow:
    projection: str
    generation: int | None
    state: str
    code_version: int | None
    position: int
    head: int
    lag_events: int
    lag_seconds: float


def status_rows(
    statuses: list[Status], known: list[Projection], head: int, log_age: float
) -> list[StatusRow]:
    """One row per generation in the checkpoints, plus one per known view never started
    (behind by the whole log: ``log_age`` seconds from the first sealed event to the head)."""
    versions = {p.name: p.version for p in known}
    rows = []
    for s in statuses:
        state = s.status
        code = versions.get(s.projection)
        if s.status == "live" and code is not None and code > s.code_version:
            state = f"live, code v{code} > v{s.code_version}: rebuild due"
        rows.append(
            StatusRow(
                s.projection,
                s.generation,
                state,
                s.code_version,
                s.log_position,
                s.head,
                s.lag_events,
                round(s.lag_seconds, 3),
            )
        )
    present = {s.projection for s in statuses}
    for projection in known:
        if projection.name not in present:
            rows.append(
                StatusRow(
                    projection.name,
                    None,
                    "absent",
                    projection.version,
                    0,
                    head,
                    head,
                    round(log_age, 3),
                )
            )
    return sorted(rows, key=lambda r: (r.projection, r.generation or 0))


@app.command()
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON for machines instead of a table.")
    ] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Each projection's generations: state, position, lag behind the log (events and seconds).

    Example: modelreg projections status --json | jq -r '.[] | select(.lag_events > 0) | .projection'
    """

    async def run(open_connection: Connect) -> list[StatusRow]:
        conn = await open_connection()
        statuses = await projection_status(conn)
        age: float = await conn.fetchval(
            "SELECT coalesce(extract(epoch FROM max(sealed_at) - min(sealed_at)), 0)::float8 FROM event_log"
        )
        return status_rows(statuses, all_projections(), await head_position(conn), age)

    output(run_with_database(_settings(data_dir), run), as_json, _status_table)


def _status_table(rows: list[StatusRow]) -> Table:
    grid = table("projection", "generation", "state", "position", "lag events", "lag seconds")
    for r in rows:
        grid.add_row(
            r.projection,
            "" if r.generation is None else str(r.generation),
            r.state,
            f"{r.position:,}",
            f"{r.lag_events:,}",
            f"{r.lag_seconds:.1f}",
        )
    return grid


# ---------------------------------------------------------------- rebuild


class RateColumn(ProgressColumn):
    """Log events applied per second since the command began."""

    def render(self, task: Task) -> Text:
        rate: float = task.fields.get("rate", 0.0)
        return Text(f"{rate:,.0f} events/s" if rate else "? events/s", style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """The time left at that rate (the target moves on while writes arrive)."""

    def render(self, task: Task) -> Text:
        rate: float = task.fields.get("rate", 0.0)
        if task.finished:
            return Text("done", style="progress.remaining")
        if not rate:
            return Text("ETA ?", style="progress.remaining")
        left = max(0.0, (task.total or 0) - task.completed) / rate
        return Text(
            f"ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}",
            style="progress.remaining",
        )


@app.command()
def rebuild(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Projections to rebuild (see `status`).", show_default=False),
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Rebuild every projection.")] = False,
    batch: Annotated[
        int, typer.Option(help="Events per rebuild transaction when this command does the work.")
    ] = 5000,
    data_dir: DataDirOption = None,
) -> None:
    """Rebuild into new tables from position 0 while the live ones serve, then switch.

    The rebuilt views' time-travel snapshots are dropped; the worker takes them again
    from the log.

    Examples:

        modelreg projections rebuild stage_timeline

        modelreg projections rebuild --all
    """
    known = {p.name: p for p in all_projections()}
    if every == bool(names):
        raise _fail("name the projections to rebuild, or pass --all (not both)")
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise _fail(f"no projection {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    chosen = (
        [known[n] for n in sorted(known)]
        if every
        else [known[n] for n in dict.fromkeys(names or ())]
    )
    settings = _settings(data_dir)
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(bar_width=16),
        TaskProgressColumn(),
        RateColumn(),
        EtaColumn(),
    )

    async def run(open_connection: Connect) -> None:
        # One connection each, all at once: the views rebuild side by side.
        connections = [await open_connection() for _ in chosen]
        await drop_snapshots(connections[0], chosen)
        with Progress(*columns, console=console, transient=False) as progress:
            done = await asyncio.gather(
                *(
                    _rebuild_one(c, settings.db_schema, p, batch, progress)
                    for c, p in zip(connections, chosen, strict=True)
                )
            )
        for line in done:
            console.print(line, soft_wrap=True, highlight=False)

    run_with_database(settings, run)


async def _rebuild_one(
    conn: asyncpg.Connection, schema: str, projection: Projection, batch: int, progress: Progress
) -> str:
    """Start (or join) a rebuild of ``projection``; do its work unless a worker leads it;
    return once its new generation serves. Returns a line saying what happened."""
    existed = bool(await generations(conn, projection.name))
    await ensure_projection(conn, projection)
    if existed:
        generation = await start_rebuild(conn, projection)
    else:
        # A projection never started: its first generation is the rebuild.
        generation = next(g.generation for g in await generations(conn, projection.name))
    lock = projection_lock_key(schema, projection.name)
    started = time.monotonic()
    leading = False
    first: int | None = None
    task = progress.add_task(
        f"{projection.name} g{generation}", total=max(1, await head_position(conn))
    )
    try:
        while True:
            mine = next(
                (g for g in await generations(conn, projection.name) if g.generation == generation),
                None,
            )
            if mine is None:
                raise CliError(
                    f"{projection.name}: generation {generation} was retired by someone else"
                )
            head = await head_position(conn)
            first = mine.log_position if first is None else first
            elapsed = time.monotonic() - started
            rate = (mine.log_position - first) / elapsed if elapsed > 0.2 else 0.0
            progress.update(task, completed=mine.log_position, total=max(1, head), rate=rate)
            if mine.status == "live" and mine.log_position >= head:
                break
            if not leading:
                # A worker that leads this projection does the work (we watch); else we do it.
                leading = await try_hold(conn, lock)
            if leading:
                await step(conn, projection, batch=batch, rebuild_batch=batch)
            else:
                await asyncio.sleep(POLL_SECONDS)
    finally:
        if leading:
            await give_up(conn, lock)
    seconds = time.monotonic() - started
    who = "by this command" if leading else "by the running worker"
    return (
        f"{projection.name}: generation {generation} is live at position {head:,}"
        f" ({seconds:.1f} s, {head / seconds if seconds else 0:,.0f} events/s, {who})"
    )


# ---------------------------------------------------------------- plumbing


def _settings(data_dir: Path | None) -> Settings:
    try:
        return load_settings(None, data_dir=str(data_dir) if data_dir else None)
    except SettingsError as exc:
        raise _fail(str(exc)) from None


def _fail(message: str) -> typer.Exit:
    return fail(message)
