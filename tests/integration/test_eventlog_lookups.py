"""The event log's named lookups that the HTTP handlers use instead of their own SQL:
the freshness probe, the log as stored, streams of a type and models' names."""

from __future__ import annotations

import pytest

from eventlog.freshness import Freshness, Located, freshness, locate_fresh
from eventlog.keys import model_names
from eventlog.log import LoggedEvent, read_log, read_log_as_stored
from eventlog.sealer import Sealer
from eventlog.store import EventStore
from events.streams import metrics_stream, model_stream, name_key, token_stream
from projections.runner import advance, ensure_projection, generations
from tests.support.database import Database
from tests.support.sample_events import CODEC, META, Counted, append_notes, notes
from tests.support.sample_projection import NOTES


@pytest.fixture
def store(db: Database) -> EventStore:
    return EventStore(db.pool, CODEC)


async def seal(db: Database) -> None:
    await Sealer(db.connect, db.schema).seal_all(await db.connect())


async def test_freshness_reports_the_head_the_views_and_a_streams_latest_sealed_event(
    db: Database, store: EventStore
) -> None:
    # given three sealed events (two of model:a, then one of model:b), a view that applied
    # the first two, and a fourth event not sealed yet
    await append_notes(store, model_stream("a"), 0, "a1", "a2")
    await append_notes(store, model_stream("b"), 0, "b1")
    await seal(db)
    await append_notes(store, model_stream("a"), 2, "a3")
    conn = await db.connect()
    await ensure_projection(conn, NOTES)
    live = (await generations(conn, NOTES.name))[0]
    await advance(conn, NOTES, live, head=2, batch=100)

    # when the probe asks about model:a and the view
    probed = await freshness(db.pool, [NOTES.name], streams=[model_stream("a")])
    both = await freshness(db.pool, [NOTES.name], streams=[model_stream("a"), model_stream("b")])

    # then it sees the head, the view's position and model:a's latest *sealed* event; asked
    # about both streams, the latest sealed event of either
    assert probed == Freshness(head=3, reached=2, latest=2)
    assert both == Freshness(head=3, reached=2, latest=3)


async def test_freshness_without_a_stream_or_views_answers_zeros_not_nulls(
    db: Database, store: EventStore
) -> None:
    # given one sealed event and no projection at all
    await append_notes(store, "s:x", 0, "x")
    await seal(db)

    # when the probe asks about no stream and a view that does not exist
    probed = await freshness(db.pool, ["no-such-view"])

    # then only the head is known
    assert probed == Freshness(head=1, reached=0, latest=0)


async def test_locate_fresh_finds_a_names_stream_and_probes_freshness_in_one_statement(
    db: Database, store: EventStore
) -> None:
    # given model m1 named churn with two sealed events and a third not sealed yet, model
    # m2 renamed from fraud to fraud-eu, metrics of m1's version 1 sealed last, and a view
    # that applied the first event only
    await store.append(model_stream("m1"), 0, notes("a1"), META, claim=[name_key("churn")])
    await store.append(model_stream("m1"), 1, notes("a2"), META)
    await store.append(model_stream("m2"), 0, notes("b1"), META, claim=[name_key("fraud")])
    await store.append(
        model_stream("m2"),
        1,
        notes("b2"),
        META,
        claim=[name_key("fraud-eu")],
        release=[name_key("fraud")],
    )
    await store.append(metrics_stream("m1", 1), 0, notes("m1"), META)
    await seal(db)
    await store.append(model_stream("m1"), 2, notes("a3"), META)
    conn = await db.connect()
    await ensure_projection(conn, NOTES)
    live = (await generations(conn, NOTES.name))[0]
    await advance(conn, NOTES, live, head=1, batch=100)

    # when churn, fraud-eu, the released name fraud and a name never used are located
    churn = await locate_fresh(db.pool, name_key("churn"), [NOTES.name])
    fraud_eu = await locate_fresh(db.pool, name_key("fraud-eu"), [NOTES.name])
    released = await locate_fresh(db.pool, name_key("fraud"), [NOTES.name])
    never = await locate_fresh(db.pool, name_key("never"), [NOTES.name])
    with_metrics = await locate_fresh(db.pool, name_key("churn"), [NOTES.name], metrics_of=1)
    without_any = await locate_fresh(db.pool, name_key("churn"), [NOTES.name], metrics_of=2)

    # then each named model comes with its stream version (unsealed appends count, as the
    # ETag does) and the freshness probe's answer for its stream: its latest *sealed* event
    assert churn == Located(
        stream_id=model_stream("m1"),
        stream_version=3,
        freshness=Freshness(head=5, reached=1, latest=2),
    )
    assert fraud_eu == Located(
        stream_id=model_stream("m2"),
        stream_version=2,
        freshness=Freshness(head=5, reached=1, latest=4),
    )
    # and asked about a version's metrics too, the later of the two streams' latest
    assert with_metrics.freshness == Freshness(head=5, reached=1, latest=5)
    assert without_any.freshness == churn.freshness
    # and a released or unknown name finds no stream, the head and the view still known
    for nobody in (released, never):
        assert nobody == Located(
            stream_id=None, stream_version=0, freshness=Freshness(head=5, reached=1, latest=0)
        )


def notes_at_least(model: str, first: int) -> str:
    """A view query in ``locate_fresh``'s form: the model's note count, if >= ``$first``."""
    names = NOTES.view_names()
    return (
        f"SELECT notes, last_text FROM {names.note_counts}"
        f" WHERE stream_id = 'model:' || {model} AND notes >= ${first}"
    )


async def test_locate_fresh_answers_a_view_query_about_the_model_in_the_same_statement(
    db: Database, store: EventStore
) -> None:
    # given model m1 named churn with two sealed events the view applied, then a third
    # sealed event the view has not applied, and model m2 named fraud with one
    await store.append(model_stream("m1"), 0, notes("a1"), META, claim=[name_key("churn")])
    await store.append(model_stream("m1"), 1, notes("a2"), META)
    await store.append(model_stream("m2"), 0, notes("b1"), META, claim=[name_key("fraud")])
    await seal(db)
    conn = await db.connect()
    await ensure_projection(conn, NOTES)
    live = (await generations(conn, NOTES.name))[0]
    await advance(conn, NOTES, live, head=3, batch=100)
    await store.append(model_stream("m1"), 2, notes("a3"), META)
    await seal(db)

    # when churn and fraud are located with the query asked along, a count their views
    # hold and one they do not, and a name never used
    churn = await locate_fresh(db.pool, name_key("churn"), [NOTES.name], notes_at_least, [2])
    fraud = await locate_fresh(db.pool, name_key("fraud"), [NOTES.name], notes_at_least, [2])
    never = await locate_fresh(db.pool, name_key("never"), [NOTES.name], notes_at_least, [0])

    # then each comes with the same freshness as without the query, and the row the views
    # held in that statement: churn's two applied notes, though a third is sealed (its
    # freshness says the views are behind, so a reader knows the row is not current)
    plain = await locate_fresh(db.pool, name_key("churn"), [NOTES.name])
    assert (churn.stream_id, churn.stream_version, churn.freshness) == (
        plain.stream_id,
        plain.stream_version,
        plain.freshness,
    )
    assert churn.freshness == Freshness(head=4, reached=3, latest=4)
    assert churn.first is not None
    assert (churn.first["notes"], churn.first["last_text"]) == (2, "a2")
    # and a model whose view holds no matching row, or no model at all, finds no row
    assert fraud.stream_id == model_stream("m2")
    assert fraud.first is None
    assert never == Located(
        stream_id=None, stream_version=0, freshness=Freshness(head=4, reached=3, latest=0)
    )


async def test_the_log_as_stored_carries_each_envelopes_exact_bytes(
    db: Database, store: EventStore
) -> None:
    # given sealed events of two types in two streams
    await store.append("s:1", 0, [*notes("one"), Counted(n=2)], META)
    await append_notes(store, "s:2", 0, "three")
    await seal(db)
    stored = {
        r["seq"]: bytes(r["envelope"])
        for r in await db.pool.fetch("SELECT seq, envelope FROM events")
    }

    # when the log is read as stored, all of it and only one type
    everything = await read_log_as_stored(db.pool, 0, 10)
    counted = await read_log_as_stored(db.pool, 0, 10, types=frozenset({"test.counted"}))

    # then each event comes with the bytes the store holds, in log order, filtered alike
    assert [(e, raw) for e, raw in everything] == [
        (e, stored[e.seq]) for e in await read_log(db.pool, 0, 10)
    ]
    assert [e.log_position for e, _ in everything] == [1, 2, 3]
    assert [(e.log_position, e.event_type) for e, _ in counted] == [(2, "test.counted")]


async def test_one_streams_events_are_read_in_log_order_within_the_bounds(
    db: Database, store: EventStore
) -> None:
    # given a stream whose events lie between other streams' (positions 1, 3, 5 and 6)
    await append_notes(store, "s:1", 0, "a")
    await append_notes(store, "s:2", 0, "x")
    await append_notes(store, "s:1", 1, "b")
    await append_notes(store, "s:3", 0, "y")
    await append_notes(store, "s:1", 2, "c", "d")
    await append_notes(store, "s:10", 0, "z")  # a longer id with the same prefix
    await seal(db)

    # when that stream is read, whole, after a position, up to one, and a page at a time
    def positions(events: list[LoggedEvent]) -> list[int]:
        return [e.log_position for e in events]

    whole = await read_log(db.pool, 0, 10, stream_id="s:1")
    after = await read_log(db.pool, 3, 10, stream_id="s:1")
    up_to = await read_log(db.pool, 0, 10, up_to=5, stream_id="s:1")
    page = await read_log(db.pool, 1, 2, stream_id="s:1")

    # then only its events come, in log order, within the bounds and the limit
    assert positions(whole) == [1, 3, 5, 6]
    assert {e.stream_id for e in whole} == {"s:1"}
    assert positions(after) == [5, 6]
    assert positions(up_to) == [1, 3, 5]
    assert positions(page) == [3, 5]
    with pytest.raises(ValueError, match="one of them"):
        await read_log(db.pool, 0, 10, stream_id="s:1", types=frozenset({"test.noted"}))


async def test_stream_ids_lists_the_streams_of_one_type_oldest_first(
    db: Database, store: EventStore
) -> None:
    # given token streams created in turn, and a stream of another type in between
    await append_notes(store, token_stream("zulu"), 0, "first")
    await append_notes(store, model_stream("m"), 0, "other type")
    await append_notes(store, token_stream("alpha"), 0, "second")

    # when the token streams are listed, then they come in the order they were created
    assert await store.stream_ids("token") == [token_stream("zulu"), token_stream("alpha")]
    assert await store.stream_ids("policy") == []


async def test_model_names_finds_each_models_current_name_in_one_lookup(
    db: Database, store: EventStore
) -> None:
    # given two named models, one of them renamed, and a stream holding another kind of key
    await store.append(model_stream("m1"), 0, notes("registered"), META, claim=[name_key("churn")])
    await store.append(model_stream("m2"), 0, notes("registered"), META, claim=[name_key("fraud")])
    await store.append(
        model_stream("m2"),
        1,
        notes("renamed"),
        META,
        claim=[name_key("fraud-eu")],
        release=[name_key("fraud")],
    )
    await store.append(model_stream("m3"), 0, notes("no name"), META, claim=["promotion:r1"])

    # when the names of those models (and of one that does not exist) are looked up
    names = await model_names(db.pool, ["m1", "m2", "m3", "missing"])

    # then each named model maps to its current name; the others are absent
    assert names == {"m1": "churn", "m2": "fraud-eu"}
    assert await model_names(db.pool, []) == {}
