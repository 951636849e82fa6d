"""Search over models and versions: the syntax on a scripted registry, results equal to a
brute-force filter of the domain's own fold on random data, cursors that stay stable while
writes happen between pages, bad input refused, search as of a past position."""

from __future__ import annotations

import random
import re
from typing import Any

import asyncpg
import pytest
from msgspec.structs import replace

from events.stages import Stage
from projections.paging import InvalidCursorError, Page, merge_names
from projections.search import (
    ModelQuery,
    VersionQuery,
    live_names,
    parse_metric_filter,
    parse_order,
    parse_tag_filter,
    search_models,
    search_versions,
)
from projections.time_travel import fold_as_of
from projections.views.model_catalogue import CATALOGUE
from projections.views.model_versions import VERSIONS
from tests.support.database import Database
from tests.support.registry_history import ALIASES, OWNERS, Registry, random_history, registry

NAMES = live_names()


async def models_of(reg: Registry, query: ModelQuery, names: Any = NAMES) -> list[str]:
    page = await search_models(reg.conn, names, query)
    return [m.model_id for m in page.items]


async def versions_of(
    reg: Registry, query: VersionQuery, model_id: str | None = None
) -> list[tuple[str, int]]:
    page = await search_versions(reg.conn, NAMES, model_id, query)
    return [(v.model_id, v.version) for v in page.items]


@pytest.fixture
async def scripted(db: Database) -> tuple[Registry, dict[str, str]]:
    """Four models; the fraud ones with versions, metrics, stages and an alias."""
    reg = await registry(db)
    ids = {
        "card": await reg.register_model(
            "card-fraud-eu", owner="team-risk", tags={"team": "risk", "tier": "gold"}
        ),
        "detect": await reg.register_model(
            "Fraud_Detect", owner="team-risk", tags={"team": "risk"}
        ),
        "dash": await reg.register_model("fraud-detect", owner="team-ml"),
        "churn": await reg.register_model("churn", owner="team-growth", tags={"tier": "silver"}),
    }
    for model, auc in (("card", 0.91), ("card", 0.85), ("detect", 0.95), ("dash", 0.7)):
        number = await reg.register_version(
            ids[model], tags={"run": "nightly"} if auc > 0.9 else {}
        )
        await reg.log_metrics(ids[model], number, {"auc": auc}, dataset="holdout")
        await reg.log_metrics(ids[model], number, {"auc": auc - 0.1})
    await reg.transition(ids["card"], 1, "staging")
    await reg.transition(ids["card"], 1, "production")
    await reg.set_alias(ids["detect"], "champion", 1)
    await reg.archive_model(ids["churn"])
    await reg.project(CATALOGUE, VERSIONS)
    return reg, ids


async def test_names_match_by_substring_or_glob_case_insensitively(
    scripted: tuple[Registry, dict[str, str]],
) -> None:
    reg, ids = scripted
    assert await models_of(reg, ModelQuery(q="FRAUD")) == [ids["detect"], ids["card"], ids["dash"]]
    assert await models_of(reg, ModelQuery(q="fraud*")) == [ids["detect"], ids["dash"]]
    assert await models_of(reg, ModelQuery(q="*-eu")) == [ids["card"]]
    assert await models_of(reg, ModelQuery(q="c*d*u")) == [ids["card"]]
    # '_' is a character of names, not a wildcard
    assert await models_of(reg, ModelQuery(q="d_d")) == [ids["detect"]]
    assert await models_of(reg, ModelQuery(q="nothing")) == []


async def test_models_filter_by_owner_tags_stages_aliases_metrics_and_archive(
    scripted: tuple[Registry, dict[str, str]],
) -> None:
    reg, ids = scripted
    assert await models_of(reg, ModelQuery(owner="team-risk")) == [ids["detect"], ids["card"]]
    assert await models_of(reg, ModelQuery(tags=("team=risk", "tier"))) == [ids["card"]]
    assert await models_of(reg, ModelQuery(stages=(Stage.PRODUCTION,))) == [ids["card"]]
    assert await models_of(reg, ModelQuery(alias="champion")) == [ids["detect"]]
    assert await models_of(reg, ModelQuery(metrics=("auc[holdout]>0.9",))) == [
        ids["detect"],
        ids["card"],
    ]
    assert await models_of(reg, ModelQuery(metrics=("auc>0.84",))) == [ids["detect"]]
    assert await models_of(reg, ModelQuery(metrics=("auc[*]>=0.85", "auc<0.8"))) == [ids["card"]]
    # archived models are hidden unless asked for
    assert ids["churn"] not in await models_of(reg, ModelQuery())
    assert await models_of(reg, ModelQuery(archived=True)) == [ids["churn"]]
    assert len(await models_of(reg, ModelQuery(archived=None))) == 4


async def test_versions_filter_and_order_by_a_metric(
    scripted: tuple[Registry, dict[str, str]],
) -> None:
    reg, ids = scripted
    by_auc = VersionQuery(order="-metric:auc[holdout]")
    assert await versions_of(reg, by_auc) == [
        (ids["detect"], 1),
        (ids["card"], 1),
        (ids["card"], 2),
        (ids["dash"], 1),
    ]
    assert await versions_of(reg, VersionQuery(order="metric:auc", metrics=("auc<0.8",))) == [
        (ids["dash"], 1),
        (ids["card"], 2),
    ]
    assert await versions_of(reg, VersionQuery(tags=("run=nightly",), order="name")) == [
        (ids["detect"], 1),
        (ids["card"], 1),
    ]
    assert await versions_of(reg, VersionQuery(stages=(Stage.PRODUCTION, Stage.STAGING))) == [
        (ids["card"], 1)
    ]
    assert await versions_of(reg, VersionQuery(alias="champion")) == [(ids["detect"], 1)]
    assert await versions_of(reg, VersionQuery(q="fraud-", owner="team-ml")) == [(ids["dash"], 1)]
    assert await versions_of(reg, VersionQuery(order="-version"), ids["card"]) == [
        (ids["card"], 2),
        (ids["card"], 1),
    ]
    page = await search_versions(reg.conn, NAMES, ids["detect"], VersionQuery())
    assert [(m.key, m.dataset) for m in page.items[0].metrics] == [("auc", ""), ("auc", "holdout")]
    # rows come without their content unless asked for
    assert page.items[0].content is None
    full = await search_versions(reg.conn, NAMES, ids["detect"], VersionQuery(with_content=True))
    assert full.items[0].content == reg.state(ids["detect"]).versions[1].content


async def test_bad_cursors_and_limits_are_value_errors(
    scripted: tuple[Registry, dict[str, str]],
) -> None:
    reg, _ = scripted
    page = await search_models(reg.conn, NAMES, ModelQuery(limit=1, archived=None))
    assert page.next_cursor is not None
    versions_page = await search_versions(reg.conn, NAMES, None, VersionQuery(limit=1))
    assert versions_page.next_cursor is not None
    bad = [
        "!!!",
        "a",
        "AAAA",
        page.next_cursor[:-3],
        page.next_cursor + "x" * 5000,
        versions_page.next_cursor,  # a versions cursor for a model search
    ]
    for cursor in bad:
        with pytest.raises(InvalidCursorError):
            await search_models(reg.conn, NAMES, ModelQuery(cursor=cursor, archived=None))
    # a cursor of another order
    with pytest.raises(InvalidCursorError):
        await search_models(
            reg.conn, NAMES, ModelQuery(order="-name", cursor=page.next_cursor, archived=None)
        )
    for limit in (0, 501):
        with pytest.raises(ValueError, match="limit"):
            await search_versions(reg.conn, NAMES, None, VersionQuery(limit=limit))
    assert issubclass(InvalidCursorError, ValueError)


# --- random data against a brute-force fold ----------------------------------------------------


def name_matches(q: str | None, name: str) -> bool:
    if not q:
        return True
    if "*" not in q:
        return q.lower() in name.lower()
    pattern = ".*".join(re.escape(part) for part in q.split("*"))
    return re.fullmatch(pattern, name, re.IGNORECASE | re.DOTALL) is not None


def tags_match(filters: tuple[str, ...], tags: dict[str, str]) -> bool:
    for text in filters:
        tag = parse_tag_filter(text)
        if tag.key not in tags or (tag.value is not None and tags[tag.key] != tag.value):
            return False
    return True


def latest(reg: Registry, model_id: str, version: int) -> dict[tuple[str, str], float]:
    by_key = reg.metrics_state(model_id, version).latest
    return {(k, d): m.value for k, by in by_key.items() for d, m in by.items()}


def metrics_match(filters: tuple[str, ...], values: dict[tuple[str, str], float]) -> bool:
    for text in filters:
        f = parse_metric_filter(text)
        if not any(
            k == f.key and (f.dataset is None or d == f.dataset) and f.matches(v)
            for (k, d), v in values.items()
        ):
            return False
    return True


def expected_models(reg: Registry, query: ModelQuery, times: dict[str, Any]) -> list[str]:
    found = []
    for model_id, s in reg.states.items():
        stages = {v.stage for v in s.versions.values()}
        if s.deleted:
            continue  # a deleted model is found by no search
        if not (
            name_matches(query.q, s.name)
            and query.owner in (None, s.owner)
            and tags_match(query.tags, s.tags)
            and (not query.stages or stages & set(query.stages))
            and (query.alias is None or query.alias in s.aliases)
            and query.archived in (None, s.archived)
            and (
                not query.metrics
                or any(metrics_match(query.metrics, latest(reg, model_id, n)) for n in s.versions)
            )
        ):
            continue
        found.append(model_id)
    order = parse_order(query.order, versions=False)
    keys = {
        "name": lambda m: (reg.states[m].name, m),
        "created": lambda m: (times[m][0], m),
        "updated": lambda m: (times[m][1], m),
    }
    return sorted(found, key=keys[order.field], reverse=order.descending)


def expected_versions(
    reg: Registry, model_id: str | None, query: VersionQuery, times: dict[Any, Any]
) -> list[tuple[str, int]]:
    order = parse_order(query.order, versions=True)
    found: dict[tuple[str, int], Any] = {}
    for m, s in reg.states.items():
        if s.deleted:
            continue  # nor are its versions
        for n, v in s.versions.items():
            values = latest(reg, m, n)
            sort_metric = values.get((order.metric_key, order.metric_dataset))
            if not (
                model_id in (None, m)
                and name_matches(query.q, s.name)
                and query.owner in (None, s.owner)
                and tags_match(query.tags, v.tags)
                and (not query.stages or v.stage in query.stages)
                and (query.alias is None or query.alias in v.aliases)
                and query.model_archived in (None, s.archived)
                and query.deprecated in (None, v.deprecated)
                and metrics_match(query.metrics, values)
                and (order.field != "metric" or sort_metric is not None)
            ):
                continue
            found[(m, n)] = {
                "name": (s.name, m, n),
                "created": (times[(m, n)][0], m, n),
                "updated": (times[(m, n)][1], m, n),
                "version": (m, n),
                "metric": (sort_metric, m, n),
            }[order.field]
    return sorted(found, key=lambda k: found[k], reverse=order.descending)


async def all_pages(fetch: Any, query: Any) -> list[Any]:
    """Follow cursors to the end; every page but the last is full."""
    keys: list[Any] = []
    cursor = None
    while True:
        page: Page[Any] = await fetch(replace(query, cursor=cursor))
        keys += page.items
        if page.next_cursor is None:
            return keys
        assert len(page.items) == query.limit
        cursor = page.next_cursor


def random_filters(rng: random.Random, reg: Registry, *, versions: bool) -> dict[str, Any]:
    """A few filters at a time, with values the data has, so most queries find something."""
    filters: dict[str, Any] = {}
    if rng.random() < 0.35:
        filters["q"] = random_q(rng, reg)
    if rng.random() < 0.2:
        filters["owner"] = rng.choice(OWNERS)
    if rng.random() < 0.2:
        filters["tags"] = tuple(
            rng.sample(("team=risk", "tier", "pii=no", "tier=gold", "team"), rng.choice((1, 1, 2)))
        )
    if rng.random() < 0.2:
        filters["stages"] = tuple(rng.sample(list(Stage), rng.choice((1, 1, 2))))
    if rng.random() < 0.15:
        filters["alias"] = rng.choice(ALIASES)
    if rng.random() < 0.3:
        filters["metrics"] = tuple(random_metric(rng) for _ in range(rng.choice((1, 1, 2))))
    if versions:
        filters["model_archived"] = rng.choice((None, None, False, True))
        filters["deprecated"] = rng.choice((None, None, None, False, True))
    else:
        filters["archived"] = rng.choice((False, None, None, True))
    return filters


def random_model_query(rng: random.Random, reg: Registry) -> ModelQuery:
    order = rng.choice(("", "-")) + rng.choice(("name", "created", "updated"))
    return ModelQuery(
        **random_filters(rng, reg, versions=False), order=order, limit=rng.randrange(1, 8)
    )


def random_version_query(rng: random.Random, reg: Registry) -> VersionQuery:
    metric_order = f"metric:{rng.choice(('auc', 'loss'))}" + rng.choice(("", "[holdout]"))
    order = rng.choice(("", "-")) + rng.choice(
        ("name", "created", "updated", "version", metric_order)
    )
    return VersionQuery(
        **random_filters(rng, reg, versions=True), order=order, limit=rng.randrange(1, 12)
    )


def random_q(rng: random.Random, reg: Registry) -> str:
    name = rng.choice([s.name for s in reg.states.values() if not s.deleted])
    start = rng.randrange(len(name))
    piece = "".join(
        c.upper() if rng.random() < 0.3 else c for c in name[start : start + rng.randrange(1, 6)]
    )
    return rng.choice(
        (piece, piece, piece + "*", "*" + piece, name[:2] + "*" + name[-2:], "zz-none")
    )


def random_metric(rng: random.Random) -> str:
    dataset = rng.choice(("", "[holdout]", "[*]", "[train]"))
    threshold = rng.choice((0.2, 0.5, 0.8, round(rng.random(), 2)))
    return f"{rng.choice(('auc', 'loss', 'f1'))}{dataset}{rng.choice(('>', '>=', '<', '<=', '='))}{threshold}"


async def view_times(conn: asyncpg.Connection) -> tuple[dict[str, Any], dict[Any, Any]]:
    """created_at/updated_at per model and per version: display fields the domain fold lacks."""
    models = {
        r["model_id"]: (r["created_at"], r["updated_at"])
        for r in await conn.fetch("SELECT model_id, created_at, updated_at FROM model_catalogue")
    }
    versions = {
        (r["model_id"], r["version"]): (r["created_at"], r["updated_at"])
        for r in await conn.fetch(
            "SELECT model_id, version, created_at, updated_at FROM model_versions"
        )
    }
    return models, versions


async def test_search_equals_a_brute_force_filter_of_the_domain_fold_on_random_data(
    db: Database,
) -> None:
    # given a random registry
    reg = await registry(db)
    rng = random.Random(14)  # a history where most random queries match something
    await random_history(reg, rng, 700)
    await reg.project(CATALOGUE, VERSIONS)
    model_times, version_times = await view_times(reg.conn)
    assert set(model_times) == {m for m, s in reg.states.items() if s.registered and not s.deleted}

    # when random queries are paged through to the end, then each equals the brute-force answer
    nonempty = 0
    for _ in range(60):
        query = random_model_query(rng, reg)
        rows = await all_pages(lambda q: search_models(reg.conn, NAMES, q), query)
        assert [r.model_id for r in rows] == expected_models(reg, query, model_times), query
        nonempty += bool(rows)
    for _ in range(80):
        query_v = random_version_query(rng, reg)
        live = [m for m, s in reg.states.items() if not s.deleted]
        model_id = rng.choice((None, None, rng.choice(live)))
        rows = await all_pages(
            lambda q, m=model_id: search_versions(reg.conn, NAMES, m, q), query_v
        )
        assert [(r.model_id, r.version) for r in rows] == expected_versions(
            reg, model_id, query_v, version_times
        ), (query_v, model_id)
        nonempty += bool(rows)
    assert nonempty > 70  # most queries find something: the comparison is not trivially []


async def test_pages_stay_stable_when_writes_happen_between_them(db: Database) -> None:
    # given a registry, and the versions and models present before paging starts
    reg = await registry(db)
    rng = random.Random(12)
    await random_history(reg, rng, 300)
    await reg.project(CATALOGUE, VERSIONS)
    before_versions = {(m, n) for m, s in reg.states.items() for n in s.versions}
    before_models = {m for m, s in reg.states.items() if s.registered}

    for order in ("created", "-created", "-version", "version"):
        # when a search is paged through while commands land between pages
        seen: list[tuple[str, int]] = []
        cursor = None
        while True:
            page = await search_versions(
                reg.conn, NAMES, None, VersionQuery(order=order, limit=9, cursor=cursor)
            )
            seen += [(v.model_id, v.version) for v in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
            await random_history(reg, rng, 4)
            await reg.project(CATALOGUE, VERSIONS)
        # then no row came twice, none that existed before was skipped, the order held
        assert len(seen) == len(set(seen))
        # (a model deleted meanwhile takes its versions with it: they cannot be expected)
        alive = {(m, n) for m, n in before_versions if not reg.states[m].deleted}
        assert alive <= set(seen)
        _, times = await view_times(reg.conn)
        keys = {k: (times[k][0], *k) if "created" in order else k for k in seen}
        assert seen == sorted(seen, key=keys.__getitem__, reverse=order.startswith("-"))

    seen_models: list[str] = []
    cursor = None
    while True:
        model_page = await search_models(
            reg.conn, NAMES, ModelQuery(order="-created", archived=None, limit=4, cursor=cursor)
        )
        seen_models += [m.model_id for m in model_page.items]
        if model_page.next_cursor is None:
            break
        cursor = model_page.next_cursor
        await random_history(reg, rng, 4)
        await reg.project(CATALOGUE, VERSIONS)
    assert len(seen_models) == len(set(seen_models))
    assert {m for m in before_models if not reg.states[m].deleted} <= set(seen_models)


async def test_a_search_as_of_a_past_position_answers_what_live_answered_then(db: Database) -> None:
    # given a search answered live at some position, and more history after it
    reg = await registry(db)
    rng = random.Random(13)
    await random_history(reg, rng, 250)
    then = await reg.project(CATALOGUE, VERSIONS)
    queries = [random_version_query(rng, reg) for _ in range(10)]
    model_queries = [random_model_query(rng, reg) for _ in range(10)]
    live_answers = [await search_versions(reg.conn, NAMES, None, q) for q in queries]
    live_models = [await search_models(reg.conn, NAMES, q) for q in model_queries]
    await random_history(reg, rng, 150)
    await reg.project(CATALOGUE, VERSIONS)

    # when the log is folded to that position into temporary tables, then the answers are the same
    async with reg.conn.transaction():
        folded = await _fold(reg.conn, then)
        for query, answer in zip(queries, live_answers, strict=True):
            assert await search_versions(reg.conn, folded, None, query) == answer
        for model_query, model_answer in zip(model_queries, live_models, strict=True):
            assert await search_models(reg.conn, folded, model_query) == model_answer


async def _fold(conn: asyncpg.Connection, position: int) -> Any:
    names = await fold_as_of(conn, [CATALOGUE, VERSIONS], position)
    return merge_names(*names.values())
