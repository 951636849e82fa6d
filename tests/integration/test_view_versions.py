"""The model versions view: every field of a version, aliases, deprecation, latest metrics,
the domain's own fold as the oracle, rebuild equals live, time travel."""

from __future__ import annotations

import random
from datetime import timedelta

import asyncpg

from events.metrics import MetricInput
from events.stages import Stage
from projections.base import Names
from projections.views.model_versions import (
    VERSIONS,
    MetricValue,
    VersionRow,
    get_version,
    latest_metrics,
    version_by_alias,
)
from tests.support.database import Database
from tests.support.registry_history import (
    Registry,
    as_of,
    check_rebuild_equals_live,
    random_history,
    record_live_positions,
    registry,
)

NAMES = VERSIONS.view_names()
checksum = VERSIONS.checksum


async def test_a_version_shows_its_content_stage_aliases_tags_and_latest_metrics(
    db: Database,
) -> None:
    # given a version with typed parameters, two datasets, tags, a stage and an alias
    reg = await registry(db)
    churn = await reg.register_model("churn", owner="team-risk")
    params = {
        "lr": 0.1,
        "alpha": 1.0,
        "huge": 1e300,
        "depth": 6,
        "objective": "binary",
        "early": True,
    }
    v1 = await reg.register_version(
        churn,
        params=params,
        datasets=["train", "holdout"],
        tags={"run": "nightly"},
        description="first",
    )
    registered = reg.last
    await reg.transition(churn, v1, "staging")
    staged = reg.last
    await reg.set_alias(churn, "champion", v1)
    # metrics: auc at step 2, then an older step (not the latest), then loss on a dataset
    await reg.log_metrics(churn, v1, {"auc": 0.81}, step=2)
    at_step_2 = reg.last
    await reg.log_metrics(churn, v1, {"auc": 0.99}, step=1)
    await reg.log_metrics(churn, v1, {"loss": 0.3}, dataset="holdout")

    # when the view is projected
    head = await reg.project(VERSIONS)

    # then every field is there, the content exactly as registered (1.0 stays a float)
    row = await get_version(db.pool, NAMES, churn, v1)
    domain = reg.state(churn).versions[v1]
    assert row == VersionRow(
        model_id=churn,
        model_name="churn",
        version=1,
        stage=Stage.STAGING,
        stage_since=staged,
        aliases=("champion",),
        description="first",
        tags={"run": "nightly"},
        content=domain.content,
        content_digest=domain.content_digest,
        registered_by="alice",
        deprecated=False,
        deprecation_reason="",
        deprecated_at=None,
        owner="team-risk",
        model_archived=False,
        created_at=registered,
        updated_at=staged + timedelta(seconds=1),
        position=row.position if row else 0,
        metrics=(
            MetricValue(key="auc", dataset="", value=0.81, step=2, timestamp=at_step_2),
            MetricValue(key="loss", dataset="holdout", value=0.3, step=0, timestamp=reg.last),
        ),
    )
    assert row is not None
    assert row.position < head  # the metric batches came later and do not move it
    assert row.content is not None
    assert type(row.content.parameters["alpha"]) is float
    assert row.content.parameters["huge"] == 1e300
    assert await latest_metrics(db.pool, NAMES, churn, v1) == row.metrics


async def test_the_later_point_wins_a_tie_of_step_and_timestamp(db: Database) -> None:
    reg = await registry(db)
    m = await reg.register_model("m")
    v = await reg.register_version(m)
    moment = reg.last
    await reg.log_points(
        m,
        v,
        [
            MetricInput(key="auc", value=0.5, step=3, timestamp=moment),
            MetricInput(key="auc", value=0.6, step=3, timestamp=moment),
        ],
    )
    await reg.log_points(
        m,
        v,
        [
            MetricInput(key="auc", value=0.7, step=3, timestamp=moment),
            MetricInput(key="auc", value=0.1, step=3, timestamp=moment - timedelta(seconds=5)),
        ],
    )
    await reg.project(VERSIONS)
    (auc,) = await latest_metrics(db.pool, NAMES, m, v)
    assert auc.value == 0.7 == reg.metrics_state(m, v).latest["auc"][""].value


async def test_an_alias_moves_between_versions_and_leaves_with_an_archived_version(
    db: Database,
) -> None:
    # given champion on v1, then moved to v2
    reg = await registry(db)
    m = await reg.register_model("ranker")
    for _ in range(3):
        await reg.register_version(m)
    await reg.set_alias(m, "champion", 1)
    await reg.set_alias(m, "champion", 2)
    await reg.set_alias(m, "canary", 2)
    await reg.project(VERSIONS)

    # then v1 lost it, v2 has both, sorted; the alias, latest and v<n> resolve
    assert (await get_version(db.pool, NAMES, m, 1)).aliases == ()  # type: ignore[union-attr]
    assert (await get_version(db.pool, NAMES, m, 2)).aliases == ("canary", "champion")  # type: ignore[union-attr]
    assert (await version_by_alias(db.pool, NAMES, m, "champion")).version == 2  # type: ignore[union-attr]
    assert (await version_by_alias(db.pool, NAMES, m, "latest")).version == 3  # type: ignore[union-attr]
    assert (await version_by_alias(db.pool, NAMES, m, "v1")).version == 1  # type: ignore[union-attr]
    assert await version_by_alias(db.pool, NAMES, m, "v9") is None
    assert await version_by_alias(db.pool, NAMES, m, "shadow") is None

    # when v2 is archived, then its aliases go with it
    await reg.archive_version(m, 2)
    await reg.project(VERSIONS)
    row = await get_version(db.pool, NAMES, m, 2)
    assert row is not None
    assert (row.stage, row.aliases) == (Stage.ARCHIVED, ())
    assert await version_by_alias(db.pool, NAMES, m, "champion") is None


async def test_rename_and_archive_of_the_model_reach_all_its_versions(db: Database) -> None:
    reg = await registry(db)
    m = await reg.register_model("vision", owner="team-ml")
    await reg.register_version(m)
    await reg.rename(m, "vision-eu")
    await reg.register_version(m)
    await reg.project(VERSIONS)  # one version written before the rename's batch, one after
    await reg.rename(m, "vision-global")
    await reg.archive_model(m)
    await reg.project(VERSIONS)
    for number in (1, 2):
        row = await get_version(db.pool, NAMES, m, number)
        assert row is not None
        assert (row.model_name, row.owner, row.model_archived) == ("vision-global", "team-ml", True)


async def test_deprecation_is_shown_with_its_reason_and_time(db: Database) -> None:
    reg = await registry(db)
    m = await reg.register_model("nlp")
    await reg.register_version(m)
    await reg.deprecate(m, 1, "leaks labels")
    await reg.project(VERSIONS)
    row = await get_version(db.pool, NAMES, m, 1)
    assert row is not None
    assert (row.deprecated, row.deprecation_reason, row.deprecated_at) == (
        True,
        "leaks labels",
        reg.last,
    )


async def assert_view_equals_domain(reg: Registry, conn: asyncpg.Connection, names: Names) -> int:
    """Every version row against ``events.model.decider``'s and ``events.metrics``' own folds."""
    compared = 0
    for model_id, state in reg.states.items():
        for number, domain in state.versions.items():
            row = await get_version(conn, names, model_id, number)
            if state.deleted:
                assert row is None  # a deleted model's versions leave the view
                continue
            assert row is not None
            assert (row.model_name, row.owner, row.model_archived) == (
                state.name,
                state.owner,
                state.archived,
            )
            assert (row.stage, row.aliases, row.tags, row.description) == (
                domain.stage,
                tuple(sorted(domain.aliases)),
                domain.tags,
                domain.description,
            )
            assert row.environments == domain.environment_names()
            assert (row.deprecated, row.deprecation_reason) == (
                domain.deprecated,
                domain.deprecation_reason,
            )
            assert (row.content, row.content_digest, row.registered_by) == (
                domain.content,
                domain.content_digest,
                domain.registered_by,
            )
            latest = reg.metrics_state(model_id, number).latest
            assert {(m.key, m.dataset): (m.value, m.step, m.timestamp) for m in row.metrics} == {
                (key, dataset): (m.value, m.step, m.timestamp)
                for key, by_dataset in latest.items()
                for dataset, m in by_dataset.items()
            }
            compared += 1
    return compared


async def test_the_view_equals_the_domains_own_fold_after_a_random_history(db: Database) -> None:
    reg = await registry(db)
    rng = random.Random(5)
    for _ in range(4):
        await random_history(reg, rng, 120)
        await reg.project(VERSIONS, batch=29)
    assert await assert_view_equals_domain(reg, reg.conn, NAMES) > 50


async def test_rebuild_equals_live_after_a_long_random_history_and_with_writes_during_it(
    db: Database,
) -> None:
    reg = await registry(db)
    rng = random.Random(43)
    for _ in range(8):
        await random_history(reg, rng, 60)
        await reg.project(VERSIONS, batch=37)
    await check_rebuild_equals_live(reg, VERSIONS, checksum, rng)
    await check_rebuild_equals_live(reg, VERSIONS, checksum, rng, traffic_rounds=6)
    await assert_view_equals_domain(reg, reg.conn, NAMES)


async def test_time_travel_at_many_positions_equals_the_live_view_as_it_was(db: Database) -> None:
    reg = await registry(db)
    await random_history(reg, random.Random(8), 220)
    watched = max(reg.states, key=lambda m: len(reg.states[m].versions))

    async def watched_version(conn: asyncpg.Connection, names: Names) -> VersionRow | None:
        return await get_version(conn, names, watched, 1)

    recorded = await record_live_positions(
        reg, VERSIONS, checksum, batch=5, observe=watched_version
    )
    assert len(recorded) > 20
    for position, expected, row in random.Random(4).sample(recorded, 12):
        assert await as_of(reg, VERSIONS, position, checksum) == expected
        assert await as_of(reg, VERSIONS, position, watched_version, model_id=watched) == row
    # and the scratch-table fold the API serves "as of" reads from gives the same rows
    for position, expected, _ in (
        recorded[-1:] + recorded[len(recorded) // 2 : len(recorded) // 2 + 1]
    ):
        assert await as_of(reg, VERSIONS, position, checksum, scratch=True) == expected
