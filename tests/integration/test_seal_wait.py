"""A write waits for its log position: woken by the sealer's NOTIFY (in this process or
another), by a timer while nobody rings, and bounded when there is no sealer at all."""

from __future__ import annotations

import asyncio

from eventlog.listener import Listener
from eventlog.positions import SealSignal, sealed_position
from eventlog.sealer import Sealer, sealed_channel
from eventlog.store import EventStore
from tests.support.database import Database
from tests.support.sample_events import CODEC, META, notes
from tests.support.waiting import eventually

# How long a write may wait for its position on a loaded machine: it returns as soon as
# the position is there, so this only bounds a failure.
WAIT = 60.0
# Longer than any wait below: a wait that ends in time was woken by a NOTIFY, not by
# the safety timer.
NO_SAFETY_NET = 600.0


async def logged_position(db: Database, seq: int) -> int | None:
    position: int | None = await db.pool.fetchval(
        "SELECT log_position FROM event_log WHERE seq = $1", seq
    )
    return position


async def test_a_write_beside_its_sealer_is_woken_by_the_notify(
    db: Database,
) -> None:
    # given a sealer in this process, and the signal rung by a LISTEN on its channel
    signal = SealSignal()
    listener = Listener(db.connect, sealed_channel(db.schema), signal.notify)
    listener.start()
    sealer = Sealer(db.connect, db.schema, idle_interval=0.5, max_idle_interval=0.5)
    store = EventStore(db.pool, CODEC, on_append=lambda _: sealer.wake())
    stop = asyncio.Event()
    running = asyncio.create_task(sealer.run(stop))
    await store.append("s:warm", 0, notes("warm-up"), META)
    await eventually(lambda: listener.listening and signal.ringing(), what="listening and rung")

    # when a write commits and waits for its position, with no timer to fall back on
    result = await store.append("s:wait", 0, notes("a", "b"), META)
    position = await sealed_position(
        db.pool, result.last_seq, timeout=WAIT, signal=signal, safety_interval=NO_SAFETY_NET
    )

    # then the NOTIFY woke it, with the position the log holds
    stop.set()
    await running
    await listener.close()
    assert position is not None
    assert position == await logged_position(db, result.last_seq)


async def test_a_signal_that_stops_ringing_falls_back_to_polling_a_sealer_elsewhere(
    db: Database,
) -> None:
    # given a signal that rang once, then its sealer went away
    signal = SealSignal()
    signal.notify()
    store = EventStore(db.pool, CODEC)
    result = await store.append("s:elsewhere", 0, notes("a"), META)

    # when another process's sealer seals the event while the write waits
    waiting = asyncio.Event()

    async def seal_elsewhere() -> None:
        await waiting.wait()
        conn = await db.connect()
        try:
            await Sealer(db.connect, db.schema).seal_all(conn)
        finally:
            await conn.close()

    sealing = asyncio.create_task(seal_elsewhere())
    wait = asyncio.create_task(
        sealed_position(db.pool, result.last_seq, timeout=WAIT, signal=signal)
    )
    await asyncio.wait({wait}, timeout=0.05)  # the write is waiting: nothing sealed it yet
    assert not wait.done()
    waiting.set()
    position = await wait
    await sealing

    # then the timer finds it all the same
    assert position is not None
    assert position == await logged_position(db, result.last_seq)


async def test_with_no_sealer_the_wait_ends_at_its_timeout_without_a_position(db: Database) -> None:
    signal = SealSignal()
    store = EventStore(db.pool, CODEC)
    result = await store.append("s:unsealed", 0, notes("a"), META)

    position = await sealed_position(db.pool, result.last_seq, timeout=0.2, signal=signal)

    assert position is None
    assert await logged_position(db, result.last_seq) is None


async def test_an_api_process_is_woken_by_the_notify_of_a_sealer_elsewhere(db: Database) -> None:
    # given a sealer that knows nothing of this process (as in a worker process), and this
    # process listening for its NOTIFY
    signal = SealSignal()
    sealer = Sealer(db.connect, db.schema, idle_interval=0.005, max_idle_interval=0.005)
    stop = asyncio.Event()
    sealing = asyncio.create_task(sealer.run(stop))
    listener = Listener(db.connect, sealed_channel(db.schema), signal.notify)
    listener.start()
    store = EventStore(db.pool, CODEC)
    await eventually(lambda: listener.listening, what="listening")

    async def woken_write(stream: str) -> None:
        result = await store.append(stream, 0, notes("a"), META)
        position = await sealed_position(
            db.pool, result.last_seq, timeout=WAIT, signal=signal, safety_interval=NO_SAFETY_NET
        )
        assert position is not None
        assert position == await logged_position(db, result.last_seq)

    # when a write commits and waits for its position with no timer to fall back on, then
    # the NOTIFY woke it in time, with the right position
    await woken_write("s:api")

    # and when the listening session is killed, the listener comes back and wakes the next
    admin = await db.admin()
    killed = await admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE pid <> pg_backend_pid() AND query = 'LISTEN \"' || $1 || '\"'",
        sealed_channel(db.schema),
    )
    assert killed == 1

    async def listening_again() -> bool:
        sessions = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN \"' || $1 || '\"'",
            sealed_channel(db.schema),
        )
        return listener.listening and sessions == 1

    await eventually(listening_again, what="the listener back")
    await woken_write("s:api-again")
    await listener.close()
    stop.set()
    await sealing


async def test_a_local_sealer_hands_each_write_the_position_the_log_holds(
    db: Database,
) -> None:
    # given a sealer in this process that hands what it sealed to the signal, and no
    # LISTEN at all
    signal = SealSignal()
    sealer = Sealer(db.connect, db.schema, batch_size=3, on_sealed=signal.sealed)
    store = EventStore(db.pool, CODEC, on_append=lambda _: sealer.wake())
    stop = asyncio.Event()
    running = asyncio.create_task(sealer.run(stop))

    # when writes of one and of several events commit at once (more than one batch) and
    # each waits for its position, with no timer to fall back on
    results = await asyncio.gather(
        *(store.append(f"s:hand-{i}", 0, notes(*"abc"[: 1 + i % 3]), META) for i in range(8))
    )
    positions = await asyncio.gather(
        *(
            sealed_position(
                db.pool, r.last_seq, timeout=WAIT, signal=signal, safety_interval=NO_SAFETY_NET
            )
            for r in results
        )
    )
    stop.set()
    await running

    # then every write got the position the log recorded for its last event, and so does
    # every event the sealer handed over
    assert positions == [await logged_position(db, r.last_seq) for r in results]
    rows = await db.pool.fetch("SELECT seq, log_position FROM event_log ORDER BY log_position")
    assert len(rows) == sum(1 + i % 3 for i in range(8))
    assert all(signal.position_of(r["seq"]) == r["log_position"] for r in rows)


async def test_a_write_sealed_elsewhere_after_a_local_sealer_handed_over_gets_its_position(
    db: Database,
) -> None:
    # given a signal that a sealer of this process hands (empty) seals to whenever the
    # LISTEN for the sealer elsewhere rings, as in the second after leadership moved:
    # every ring is a hand-over that leaves the write's position unknown
    signal = SealSignal()
    listener = Listener(db.connect, sealed_channel(db.schema), lambda: signal.sealed([], 1))
    listener.start()
    elsewhere = Sealer(db.connect, db.schema, idle_interval=0.005, max_idle_interval=0.005)
    stop = asyncio.Event()
    sealing = asyncio.create_task(elsewhere.run(stop))
    store = EventStore(db.pool, CODEC)
    await eventually(lambda: listener.listening, what="listening")

    # when a write commits and waits, rung by seals whose positions nobody hands over
    result = await store.append("s:moved", 0, notes("a"), META)
    position = await sealed_position(db.pool, result.last_seq, timeout=WAIT, signal=signal)

    # then the timer's look finds the position the log holds
    stop.set()
    await sealing
    await listener.close()
    assert position is not None
    assert position == await logged_position(db, result.last_seq)
