"""``modelreg projections status`` and ``rebuild``, against a real Postgres schema."""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from eventlog.migrate import apply_migrations
from eventlog.sealer import sealed_channel
from projections.registry_state import REGISTRY_PROJECTIONS, all_projections, registry_as_of
from projections.runner import ProjectionWorker, generations
from projections.snapshot_worker import take_due_snapshots
from projections.snapshots import snapshot_positions
from projections.views import stage_timeline
from service.cli.projections import app, running_embedded_url
from service.runtime.embedded import EmbeddedPostgres
from tests.support.database import Database
from tests.support.registry_history import Registry, random_history
from tests.support.waiting import eventually

TIMELINE = stage_timeline.PROJECTION


async def run_cli(env: dict[str, str], *args: str) -> Result:
    """Run the CLI in a thread: it runs its own event loop."""

    def run() -> Result:
        return CliRunner().invoke(app, list(args), env=env)

    return await asyncio.to_thread(run)


async def invoke(db: Database, *args: str) -> Result:
    """The CLI pointed at the test schema."""
    env = {
        "MODELREG_DATABASE_URL": db.url,
        "MODELREG_DB_SCHEMA": db.schema,
        "MODELREG_DB_APP_ROLE": db.app_role,
    }
    return await run_cli(env, *args)


async def test_status_shows_position_lag_and_state_of_every_projection(db: Database) -> None:
    # given the stage timeline caught up, then more events it has not seen yet
    reg = Registry(db)
    await random_history(reg, random.Random(3), 30)
    caught_up = await reg.project(TIMELINE)
    await asyncio.sleep(0.05)  # the scenario: time passes, so the lag in seconds is above 0
    await random_history(reg, random.Random(4), 10)
    head = await reg.seal()
    assert head > caught_up

    result = await invoke(db, "status", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["projection"]: r for r in json.loads(result.stdout)}
    # then the timeline is live at its position, behind the head by events and seconds
    timeline = rows[TIMELINE.name]
    assert (timeline["generation"], timeline["state"], timeline["position"]) == (
        1,
        "live",
        caught_up,
    )
    assert timeline["lag_events"] == head - caught_up and timeline["lag_seconds"] > 0
    # and every other view of the package is listed as not started
    assert set(rows) == {p.name for p in all_projections()}
    assert {r["state"] for name, r in rows.items() if name != TIMELINE.name} == {"absent"}

    table = await invoke(db, "status")
    assert table.exit_code == 0, table.output
    for header in ("projection", "generation", "state", "position", "lag events", "lag seconds"):
        assert header in table.stdout


async def test_rebuild_without_a_worker_does_the_work_and_switches(db: Database) -> None:
    # given a live timeline over a history, and no worker running
    reg = Registry(db)
    await random_history(reg, random.Random(8), 60)
    conn = await db.connect()
    head = await reg.project(TIMELINE)
    before = await TIMELINE.checksum(db.pool, TIMELINE.view_names())

    # when the timeline is rebuilt from the command line
    result = await invoke(db, "rebuild", TIMELINE.name, "--batch", "17")

    # then generation 2 serves, at the head, with the same rows, built by the command itself
    assert result.exit_code == 0, result.output
    assert f"{TIMELINE.name}: generation 2 is live at position {head:,}" in result.stderr
    assert "by this command" in result.stderr
    assert [
        (g.generation, g.status, g.log_position) for g in await generations(conn, TIMELINE.name)
    ] == [(2, "live", head)]
    assert await TIMELINE.checksum(db.pool, TIMELINE.view_names()) == before


async def test_rebuild_drops_the_rebuilt_views_snapshots_and_keeps_the_others(
    db: Database,
) -> None:
    # given time-travel snapshots of every registry view
    reg = Registry(db)
    await random_history(reg, random.Random(9), 40)
    head = await reg.seal()
    conn = await db.connect()
    await take_due_snapshots(conn, REGISTRY_PROJECTIONS, every=10, keep=10, thin=1)
    before = await registry_as_of(conn, head)

    # when the timeline is rebuilt from the command line
    result = await invoke(db, "rebuild", TIMELINE.name)

    # then its snapshots are gone, the other views' stay, and the answers are unchanged
    assert result.exit_code == 0, result.output
    assert await snapshot_positions(conn, TIMELINE) == []
    others = [p for p in REGISTRY_PROJECTIONS if p.name != TIMELINE.name]
    assert all([await snapshot_positions(conn, p) for p in others])
    assert await registry_as_of(conn, head) == before


async def test_rebuild_with_a_worker_running_waits_for_the_worker_to_switch(db: Database) -> None:
    # given a worker that leads the timeline
    reg = Registry(db)
    await random_history(reg, random.Random(9), 40)
    await reg.seal()
    stop = asyncio.Event()
    worker = ProjectionWorker(
        db.connect,
        db.schema,
        [TIMELINE],
        channel=sealed_channel(db.schema),
        poll_interval=0.05,
        rebuild_batch=7,
    )
    task = asyncio.create_task(worker.run(stop))
    try:
        await eventually(lambda: TIMELINE.name in worker.leading, what="the worker leads")

        # when a rebuild is asked for
        result = await invoke(db, "rebuild", TIMELINE.name)

        # then the worker did it, and the command returned once it had switched
        assert result.exit_code == 0, result.output
        assert "by the running worker" in result.stderr
        conn = await db.connect()
        assert [(g.generation, g.status) for g in await generations(conn, TIMELINE.name)] == [
            (2, "live")
        ]
    finally:
        stop.set()
        await task


async def test_rebuild_all_starts_absent_views_and_rebuilds_the_others(db: Database) -> None:
    reg = Registry(db)
    await random_history(reg, random.Random(10), 20)
    conn = await db.connect()
    await reg.project(TIMELINE)

    result = await invoke(db, "rebuild", "--all")

    assert result.exit_code == 0, result.output
    for projection in all_projections():
        expected = 2 if projection.name == TIMELINE.name else 1
        assert [(g.generation, g.status) for g in await generations(conn, projection.name)] == [
            (expected, "live")
        ]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Outside pytest's basetemp: as root the embedded Postgres runs as another user and needs
    # o+x on every parent, and any other pytest session on the machine resets
    # /tmp/pytest-of-root to 0700.
    with tempfile.TemporaryDirectory(prefix="modelreg-test-") as path:
        yield Path(path)


async def test_status_attaches_to_the_embedded_postgres_a_running_serve_started(
    data_dir: Path,
) -> None:
    # given an embedded Postgres running on a data dir (as `modelreg serve` leaves it), migrated
    server = EmbeddedPostgres(data_dir)
    url = await asyncio.to_thread(server.start)
    try:
        await apply_migrations(url, schema="modelreg", app_role="modelreg_app")
        assert running_embedded_url(data_dir) == url

        # when status runs with no database URL, pointed at that data dir
        env = {"MODELREG_DATA_DIR": str(data_dir), "MODELREG_DATABASE_URL": ""}
        result = await run_cli(env, "status", "--json")

        # then it reads that server (the data dir lock is held: it could not start another)
        assert result.exit_code == 0, result.output
        assert {r["state"] for r in json.loads(result.stdout)} == {"absent"}
    finally:
        await asyncio.to_thread(server.stop)
    assert running_embedded_url(data_dir) is None


async def test_rebuild_refuses_unknown_names_in_one_line(db: Database) -> None:
    result = await invoke(db, "rebuild", "nope")
    assert result.exit_code == 2
    assert result.stderr.startswith("modelreg: no projection nope; known: ")
    assert (await invoke(db, "rebuild")).exit_code == 2
