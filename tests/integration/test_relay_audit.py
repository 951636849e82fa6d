"""Auditors follow the published stream live and mirror it to a file whose hash chains are
verified as it grows, resumed where it stopped, and re-verified on every start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from eventlog.store import EventStore
from service.consumers.audit_follow import ChainError, Mirror, Published, follow, seek
from tests.support.database import Database
from tests.support.publication import (
    Clients,
    Names,
    Writer,
    clients,
    log_event_ids,
    names,
    nc,
    publish,
    store,
    stream_contents,
)
from tests.support.waiting import eventually

__all__ = ["clients", "names", "nc", "store"]  # fixtures

ROOT = Path(__file__).resolve().parents[2]


async def test_the_mirror_appends_verified_events_and_resumes_where_it_stopped(
    db: Database,
    store: EventStore,
    nc: NatsClient,
    names: Names,
    clients: Clients,
    nats_url: str,
    tmp_path: Path,
) -> None:
    # given 20 published events
    writer = Writer(store, "model")
    await writer.spread(20, streams=3)
    await publish(db, names, clients, nats_url)
    path = tmp_path / "audit.jsonl"

    # when the mirror catches up
    assert await Mirror(path).run(nc, stream=names.stream, until_caught_up=True) == 20

    # then each line carries the envelope verbatim and both chain values
    lines = path.read_bytes().splitlines()
    stored = await stream_contents(nc, names.stream)
    assert len(lines) == 20
    first = json.loads(lines[0])
    assert first["log_position"] == 1 and first["nats_seq"] == stored[0].seq
    assert first["log_hash"] == stored[0].headers["Modelreg-Log-Hash"]
    assert (
        msgspec.json.encode(msgspec.json.decode(lines[0])["event"], order="sorted")
        == stored[0].payload
    )

    # when more events arrive, along with a copy re-sent beyond the duplicate window, and
    # the last line was torn by a crash
    await writer.spread(10, streams=3, tag="more")
    await publish(db, names, clients, nats_url)
    copy = stored[4]
    headers = {k: v for k, v in copy.headers.items() if not k.startswith("Nats-Expected")}
    await nc.jetstream().publish(
        copy.subject, copy.payload, headers={**headers, "Nats-Msg-Id": "late-copy"}
    )
    path.write_bytes(path.read_bytes()[:-25])

    # then the resumed mirror re-verifies the file, re-fetches the torn event, skips the copy
    mirror = Mirror(path)
    assert await mirror.run(nc, stream=names.stream, until_caught_up=True) == 11
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["log_position"] for r in records] == list(range(1, 31))
    assert [r["event"]["event_id"] for r in records] == await log_event_ids(db)
    assert mirror.verifier.log_position == 30
    assert Mirror(path).load() == 30


async def test_a_tampered_mirror_file_is_caught_on_resume(
    db: Database,
    store: EventStore,
    nc: NatsClient,
    names: Names,
    clients: Clients,
    nats_url: str,
    tmp_path: Path,
) -> None:
    await Writer(store, "model").spread(8, streams=2)
    await publish(db, names, clients, nats_url)
    path = tmp_path / "audit.jsonl"
    await Mirror(path).run(nc, stream=names.stream, until_caught_up=True)

    # when someone edits an event in the file
    lines = path.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"text":"e4"', b'"text":"e5"')
    path.write_bytes(b"".join(lines))

    # then loading it names the first broken position
    with pytest.raises(ChainError) as broken:
        Mirror(path).load()
    assert broken.value.log_position == 5


async def test_a_forged_event_in_the_stream_stops_the_mirror(
    db: Database,
    store: EventStore,
    nc: NatsClient,
    names: Names,
    clients: Clients,
    nats_url: str,
    tmp_path: Path,
) -> None:
    await Writer(store, "model").spread(4, streams=2)
    await publish(db, names, clients, nats_url)
    stored = await stream_contents(nc, names.stream)

    # when a fifth "event" is published with a log hash that does not chain
    forged_envelope = msgspec.json.decode(stored[3].payload)
    forged_envelope.update(event_id="00000000-0000-4000-8000-000000000005", stream_position=3)
    payload = msgspec.json.encode(forged_envelope, order="sorted")
    headers = {k: v for k, v in stored[3].headers.items() if not k.startswith("Nats-Expected")}
    headers.update(
        {
            "Nats-Msg-Id": "forged",
            "ce-id": forged_envelope["event_id"],
            "Modelreg-Log-Position": "5",
            "ce-sequence": "5".zfill(20),
            "Modelreg-Stream-Position": "3",
            "Modelreg-Log-Hash": "ab" * 32,
        }
    )
    await nc.jetstream().publish(stored[3].subject, payload, headers=headers)

    # then the mirror keeps the four genuine events and refuses the fifth
    mirror = Mirror(tmp_path / "audit.jsonl")
    with pytest.raises(ChainError, match="global chain") as broken:
        await mirror.run(nc, stream=names.stream, until_caught_up=True)
    assert broken.value.log_position == 5
    assert len((tmp_path / "audit.jsonl").read_bytes().splitlines()) == 4


async def test_follow_delivers_history_from_a_position_then_live_events_filtered_by_type(
    db: Database, store: EventStore, nc: NatsClient, names: Names, clients: Clients, nats_url: str
) -> None:
    writer = Writer(store, "model")
    await writer.spread(10, streams=2)
    await publish(db, names, clients, nats_url)
    assert await seek(nc, names.stream, 6) == (await stream_contents(nc, names.stream))[6].seq

    seen: list[Published] = []
    live: list[Published] = []
    stop = asyncio.Event()

    async def collect(target: list[Published], **options: Any) -> None:
        async for event in follow(
            nc, stream=names.stream, subject_prefix=names.prefix, stop=stop, **options
        ):
            target.append(event)

    tasks = [
        asyncio.create_task(collect(seen, since=6)),
        asyncio.create_task(collect(live, event_types=["test.noted"])),
    ]
    await eventually(lambda: _has(seen, 4), what="history after position 6")
    await writer.spread(5, streams=2, tag="live")
    await publish(db, names, clients, nats_url)
    await eventually(lambda: _both(_has(seen, 9), _has(live, 5)), what="live events")
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)

    assert [p.event.log_position for p in seen] == list(range(7, 16))
    assert [p.event.log_position for p in live] == list(range(11, 16))
    assert all(p.event.type == "test.noted" for p in live)


async def test_the_cli_mirrors_follows_and_exits_1_on_a_broken_chain(
    db: Database,
    store: EventStore,
    nc: NatsClient,
    names: Names,
    clients: Clients,
    nats_url: str,
    tmp_path: Path,
) -> None:
    await Writer(store, "model").spread(6, streams=2)
    await publish(db, names, clients, nats_url)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MODELREG_NATS_URL": nats_url,
        "MODELREG_NATS_STREAM": names.stream,
        "MODELREG_NATS_SUBJECT_PREFIX": names.prefix,
    }
    path = tmp_path / "audit.jsonl"

    # mirror --once: appends and exits 0
    code, _, err = await _cli(env, "mirror", str(path), "--once")
    assert code == 0, err
    assert len(path.read_bytes().splitlines()) == 6 and "verified through log position 6" in err

    # follow --json --from-start: one JSON object per line until SIGTERM
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from service.cli.audit import app; app()",
        "follow",
        "--json",
        "--from-start",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    lines = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 60)) for _ in range(6)]
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    assert [line["log_position"] for line in lines] == list(range(1, 7))

    # a tampered file: exit 1 naming the position
    data = path.read_bytes().splitlines(keepends=True)
    data[2] = data[2].replace(b'"actor":"alice"', b'"actor":"mallory"')
    path.write_bytes(b"".join(data))
    code, _, err = await _cli(env, "mirror", str(path), "--once")
    assert code == 1 and "log position 3" in err

    # NATS unreachable: exit 2 with one line
    code, _, err = await _cli(
        {**env, "MODELREG_NATS_URL": "nats://127.0.0.1:1"}, "mirror", str(path), "--once"
    )
    assert code == 2 and "cannot connect to NATS" in err


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from service.cli.audit import app; app()",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _has(items: list[Published], count: int) -> bool:
    return len(items) >= count


async def _both(first: Awaitable[bool], second: Awaitable[bool]) -> bool:
    # Await both: a coroutine left unawaited by a short-circuit is a warning (an error here).
    results = [await first, await second]
    return all(results)
