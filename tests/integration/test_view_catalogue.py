"""The model catalogue view: scripted histories, renames, rebuild equals live, time travel."""

from __future__ import annotations

import random

import asyncpg

from eventlog.store import Metadata
from events.model.events import ModelRegistered
from events.streams import model_stream
from projections.base import Names
from projections.views.model_catalogue import (
    CATALOGUE,
    ModelRow,
    get_model,
    get_model_by_name,
)
from tests.support.database import Database
from tests.support.registry_history import (
    as_of,
    check_rebuild_equals_live,
    random_history,
    record_live_positions,
    registry,
)

NAMES = CATALOGUE.view_names()
checksum = CATALOGUE.checksum


async def test_the_catalogue_shows_facts_stages_aliases_and_counts(db: Database) -> None:
    # given a model with three versions: one in production under an alias, one in staging
    reg = await registry(db)
    churn = await reg.register_model(
        "churn", owner="team-risk", tags={"team": "risk"}, description="who leaves"
    )
    created = reg.last
    for _ in range(3):
        await reg.register_version(churn)
    await reg.transition(churn, 1, "staging")
    await reg.transition(churn, 1, "production")
    await reg.transition(churn, 2, "staging")
    await reg.set_alias(churn, "champion", 1)
    await reg.set_tags(churn, {"tier": "gold"})

    # when the catalogue is projected
    head = await reg.project(CATALOGUE)

    # then the row shows all of it
    assert await get_model(db.pool, NAMES, churn) == ModelRow(
        model_id=churn,
        name="churn",
        description="who leaves",
        tags={"team": "risk", "tier": "gold"},
        owner="team-risk",
        archived=False,
        latest_version=3,
        version_count=3,
        stages={"development": 3, "staging": 2, "production": 1, "archived": None},
        stage_counts={"development": 1, "staging": 1, "production": 1, "archived": 0},
        aliases={"champion": 1},
        created_at=created,
        updated_at=reg.last,
        position=head,
    )

    # when version 2 is promoted: version 1 is demoted to archived and loses its alias
    await reg.transition(churn, 2, "production")
    await reg.project(CATALOGUE)

    # then
    row = await get_model(db.pool, NAMES, churn)
    assert row is not None
    assert row.stages == {"development": 3, "staging": None, "production": 2, "archived": 1}
    assert row.stage_counts == {"development": 1, "staging": 0, "production": 1, "archived": 1}
    assert row.aliases == {}
    assert row.updated_at == reg.last


async def test_tags_description_archive_and_restore_are_shown(db: Database) -> None:
    reg = await registry(db)
    fraud = await reg.register_model("fraud", tags={"team": "risk", "pii": "yes"})
    await reg.remove_tags(fraud, "pii")
    await reg.describe(fraud, "card fraud")
    await reg.archive_model(fraud)
    await reg.project(CATALOGUE)
    row = await get_model(db.pool, NAMES, fraud)
    assert row is not None
    assert (row.tags, row.description, row.archived, row.latest_version, row.version_count) == (
        {"team": "risk"},
        "card fraud",
        True,
        None,
        0,
    )

    await reg.restore_model(fraud)
    await reg.project(CATALOGUE)
    assert (await get_model(db.pool, NAMES, fraud)).archived is False  # type: ignore[union-attr]


async def test_a_renamed_model_is_found_by_its_new_name_and_its_old_name_can_be_reused(
    db: Database,
) -> None:
    # given churn renamed to churn-v1, and a new model registered as churn
    reg = await registry(db)
    old = await reg.register_model("churn")
    await reg.rename(old, "churn-v1")
    new = await reg.register_model("churn")

    # when projected
    await reg.project(CATALOGUE)

    # then each name leads to its model, and the id of the renamed one did not change
    assert (await get_model_by_name(db.pool, NAMES, "churn-v1")).model_id == old  # type: ignore[union-attr]
    assert (await get_model_by_name(db.pool, NAMES, "churn")).model_id == new  # type: ignore[union-attr]
    assert await get_model_by_name(db.pool, NAMES, "Churn") is None  # names are case-sensitive


async def test_a_name_taken_in_the_log_before_its_release_does_not_stop_the_view(
    db: Database,
) -> None:
    # given model A named "x"; model B's registration as "x" reaches the log before A's
    # rename releases the name (two transactions sealed in xid order, not commit order)
    reg = await registry(db)
    a = await reg.register_model("x")
    meta = Metadata(actor="alice", occurred_at=reg.moment())
    registered_b = ModelRegistered(
        model_id="mb", name="x", description="", tags={}, owner="team-ml"
    )
    await reg.store.append(model_stream("mb"), 0, [registered_b], meta)
    between = await reg.seal()
    await reg.rename(a, "y")

    # when the catalogue folds it
    await reg.project(CATALOGUE)

    # then it did not stop, and the name belongs to the model that took it last
    assert (await get_model_by_name(db.pool, NAMES, "x")).model_id == "mb"  # type: ignore[union-attr]
    assert (await get_model_by_name(db.pool, NAMES, "y")).model_id == a  # type: ignore[union-attr]
    # and between the two events, "x" already leads to B
    found = await as_of(reg, CATALOGUE, between, lambda c, n: get_model_by_name(c, n, "x"))
    assert found.model_id == "mb"


async def test_rebuild_equals_live_after_a_long_random_history_and_with_writes_during_it(
    db: Database,
) -> None:
    # given a long random history, projected live as it was written, in many small batches
    reg = await registry(db)
    rng = random.Random(41)
    for _ in range(8):
        await random_history(reg, rng, 60)
        await reg.project(CATALOGUE, batch=37)

    # when the view is rebuilt from position 0 with no writes, then its rows are the live rows
    await check_rebuild_equals_live(reg, CATALOGUE, checksum, rng)

    # when it is rebuilt again while commands keep coming, then it still equals live
    await check_rebuild_equals_live(reg, CATALOGUE, checksum, rng, traffic_rounds=6)


async def test_time_travel_at_many_positions_equals_the_live_view_as_it_was(db: Database) -> None:
    # given a random history; the live view stepped 5 events at a time, a checksum and one
    # model's row recorded at each position
    reg = await registry(db)
    await random_history(reg, random.Random(7), 220)
    watched = next(iter(reg.states))

    async def watched_row(conn: asyncpg.Connection, names: Names) -> ModelRow | None:
        return await get_model(conn, names, watched)

    recorded = await record_live_positions(reg, CATALOGUE, checksum, batch=5, observe=watched_row)
    assert len(recorded) > 20

    # when the log is folded again up to each position, then it matches what live showed then
    for position, expected, row in random.Random(3).sample(recorded, 12):
        assert await as_of(reg, CATALOGUE, position, checksum) == expected
        assert await as_of(reg, CATALOGUE, position, watched_row, model_id=watched) == row
    # and the scratch-table fold the API serves "as of" reads from gives the same rows
    for position, expected, _ in (
        recorded[-1:] + recorded[len(recorded) // 2 : len(recorded) // 2 + 1]
    ):
        assert await as_of(reg, CATALOGUE, position, checksum, scratch=True) == expected
