"""Signed checkpoints anchor the log outside the database: a consistent truncation (tail rows
deleted, heads rewound) or a re-chained rewrite passes the in-database chains but not the
checkpoints, checked with the public key only. Real Postgres and NATS; the tampering is done
as the owner with triggers off, as a DBA with full access could."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats.js.errors
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NatsClient
from typer.testing import CliRunner, Result

from eventlog.checkpoints import (
    load_public_key,
    public_key_path,
    read_checkpoint_dir,
    sign_checkpoint,
    write_checkpoint_file,
)
from eventlog.sealer import Sealer
from eventlog.store import EventStore
from eventlog.verify import VerifyReport, verify
from service.cli.audit import app
from service.publication.checkpointer import (
    CheckpointConfig,
    Checkpointer,
    read_checkpoint_stream,
)
from service.publication.jetstream import StreamSpec
from tests.support.database import Database
from tests.support.publication import Names, names, nats_factory, nc
from tests.support.sample_events import CODEC, append_notes
from tests.support.waiting import eventually

__all__ = ["names", "nc"]  # fixtures

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def sealed(db: Database) -> Database:
    """Streams a (5 events) and b (3 events), interleaved, all sealed: a4 and a5 are 7 and 8."""
    store = EventStore(db.pool, CODEC)
    for i in range(5):
        await append_notes(store, "v:a", i, f"a{i + 1}")
        if i < 3:
            await append_notes(store, "v:b", i, f"b{i + 1}")
    assert await Sealer(db.connect, db.schema).seal_all(await db.connect()) == 8
    return db


def config(db: Database, tmp_path: Path, **overrides: object) -> CheckpointConfig:
    options: dict[str, object] = {
        "schema": db.schema,
        "key_path": tmp_path / "keys" / "checkpoint-key.pem",
        "directory": tmp_path / "checkpoints",
        "poll_interval": 0.05,
    }
    options.update(overrides)
    return CheckpointConfig(**options)  # type: ignore[arg-type]


async def checkpoint_now(db: Database, tmp_path: Path) -> Checkpointer:
    checkpointer = Checkpointer(db.connect, None, config(db, tmp_path))
    assert await checkpointer.checkpoint_once(await db.connect()) is not None
    return checkpointer


async def truncate_consistently(db: Database, keep: int) -> None:
    """Delete every event after log position ``keep`` and rewind the stream heads and the
    sealer's cursor to match: nothing inside the database contradicts the shorter log."""
    admin = await db.admin()
    async with admin.transaction():
        await admin.execute("SET LOCAL session_replication_role = replica")
        await admin.execute(
            "CREATE TEMP TABLE cut AS SELECT seq FROM event_log WHERE log_position > $1", keep
        )
        await admin.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM cut)")
        await admin.execute("DELETE FROM event_log WHERE seq IN (SELECT seq FROM cut)")
        await admin.execute(
            "UPDATE streams s SET version = e.stream_position, last_hash = e.stream_hash"
            " FROM events e WHERE e.stream_id = s.stream_id AND e.stream_position ="
            " (SELECT max(stream_position) FROM events x WHERE x.stream_id = s.stream_id)"
        )
        await admin.execute(
            "UPDATE sealer_state SET last_log_position = l.log_position, last_log_hash = l.log_hash,"
            " last_tx_id = e.tx_id, last_seq = e.seq"
            " FROM event_log l JOIN events e USING (seq) WHERE l.log_position = $1",
            keep,
        )


async def verify_with(
    db: Database, tmp_path: Path, key_path: Path | None = None
) -> tuple[VerifyReport, VerifyReport]:
    """The report without checkpoints, and with those in the directory and the public key."""
    conn = await db.connect()
    public = load_public_key(public_key_path(key_path or config(db, tmp_path).key_path))
    signed = read_checkpoint_dir(config(db, tmp_path).directory)
    return await verify(conn), await verify(conn, checkpoints=signed, public_key=public)


async def test_an_untouched_log_extends_its_checkpoints(sealed: Database, tmp_path: Path) -> None:
    # given a checkpoint signed at the head
    await checkpoint_now(sealed, tmp_path)
    # when the store is verified against it
    plain, anchored = await verify_with(sealed, tmp_path)
    # then both are ok, and the checkpoint was checked
    assert plain.ok and anchored.ok
    assert anchored.checkpoints_checked == 1


async def test_the_key_file_is_private_and_outside_the_database(
    sealed: Database, tmp_path: Path
) -> None:
    # given a checkpointer run for the first time
    checkpointer = await checkpoint_now(sealed, tmp_path)
    # then its key file is readable by its owner only, and the public half lies beside it
    key_path = checkpointer.config.key_path
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert public_key_path(key_path).read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    # and the checkpoint file names the head
    (only,) = read_checkpoint_dir(checkpointer.config.directory)
    assert only.log_position == 8


async def test_a_consistent_truncation_is_named_only_with_the_checkpoints(
    sealed: Database, tmp_path: Path
) -> None:
    # given a checkpoint at position 8, then the tail cut to 6 and every head rewound
    await checkpoint_now(sealed, tmp_path)
    await truncate_consistently(sealed, keep=6)
    # when the store is verified, without and with the checkpoints
    plain, anchored = await verify_with(sealed, tmp_path)
    # then the chains alone see nothing, and the checkpoint names the first missing position
    assert plain.ok
    assert not anchored.ok and anchored.first_break is not None
    assert (anchored.first_break.kind, anchored.first_break.log_position) == ("truncated_tail", 7)
    assert "covers log position 8" in anchored.first_break.detail


async def test_a_rewritten_and_rechained_tail_breaks_the_signed_hash(
    sealed: Database, tmp_path: Path
) -> None:
    # given a checkpoint at 8, then the tail cut to 6 and two other events sealed at 7 and 8
    await checkpoint_now(sealed, tmp_path)
    await truncate_consistently(sealed, keep=6)
    await append_notes(EventStore(sealed.pool, CODEC), "v:a", 3, "x4", "x5")
    assert await Sealer(sealed.connect, sealed.schema).seal_all(await sealed.connect()) == 2
    # when the store is verified, without and with the checkpoints
    plain, anchored = await verify_with(sealed, tmp_path)
    # then the chains alone see nothing, and the signed hash at 8 no longer matches
    assert plain.ok
    assert anchored.first_break is not None
    assert (anchored.first_break.kind, anchored.first_break.log_position) == (
        "checkpoint_mismatch",
        8,
    )


async def test_a_checkpoint_signed_by_another_key_is_refused(
    sealed: Database, tmp_path: Path
) -> None:
    # given a genuine checkpoint, and one at position 9 signed by a key that is not the signer's
    await checkpoint_now(sealed, tmp_path)
    forged = sign_checkpoint(Ed25519PrivateKey.generate(), 9, bytes(32), T0)
    write_checkpoint_file(config(sealed, tmp_path).directory, forged)
    # when the store is verified with the signer's public key
    _, anchored = await verify_with(sealed, tmp_path)
    # then the forgery is reported and not trusted (it would otherwise claim a cut tail)
    assert [b.kind for b in anchored.breaks] == ["bad_checkpoint"]
    assert anchored.breaks[0].log_position == 9


async def test_checkpoints_follow_the_event_and_time_cadence(
    sealed: Database, tmp_path: Path
) -> None:
    # given a checkpointer signing every 3 events or every 60 s, which signed position 8
    checkpointer = Checkpointer(
        sealed.connect, None, config(sealed, tmp_path, every_events=3, interval=60.0)
    )
    conn = await sealed.connect()
    assert await checkpointer.checkpoint_once(conn, now=T0) is not None
    store = EventStore(sealed.pool, CODEC)
    sealer = Sealer(sealed.connect, sealed.schema)
    # when two more events are sealed within the minute: not due
    await append_notes(store, "v:b", 3, "b4", "b5")
    await sealer.seal_all(conn)
    assert await checkpointer.checkpoint_once(conn, now=T0 + timedelta(seconds=1)) is None
    # then a third makes it due, and so does the minute passing after one more
    await append_notes(store, "v:b", 5, "b6")
    await sealer.seal_all(conn)
    signed = await checkpointer.checkpoint_once(conn, now=T0 + timedelta(seconds=2))
    assert signed is not None and signed.log_position == 11
    await append_notes(store, "v:b", 6, "b7")
    await sealer.seal_all(conn)
    assert await checkpointer.checkpoint_once(conn, now=T0 + timedelta(seconds=30)) is None
    later = await checkpointer.checkpoint_once(conn, now=T0 + timedelta(seconds=63))
    assert later is not None and later.log_position == 12


async def test_the_worker_publishes_to_a_stream_that_denies_delete_and_purge(
    sealed: Database, tmp_path: Path, nats_url: str, nc: NatsClient, names: Names
) -> None:
    # given the checkpointer running as a worker, publishing to its own stream
    spec = StreamSpec(name=names.stream, subject_prefix=f"{names.prefix}.checkpoints")
    checkpointer = Checkpointer(
        sealed.connect, nats_factory(nats_url), config(sealed, tmp_path, stream=spec)
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(checkpointer.run(stop))
    try:
        # when it has led for a moment
        async def published() -> bool:
            try:
                return bool(await read_checkpoint_stream(nc, names.stream))
            except nats.js.errors.NotFoundError:
                return False

        await eventually(published, what="a checkpoint in the stream")
    finally:
        stop.set()
        await worker
    # then the stream holds the very checkpoint of the file
    (in_stream,) = await read_checkpoint_stream(nc, names.stream)
    assert [in_stream] == read_checkpoint_dir(checkpointer.config.directory)
    # and the stream refuses to have it deleted or purged
    jsm = nc.jsm(timeout=5)
    info = await jsm.stream_info(names.stream)
    assert info.config.deny_delete and info.config.deny_purge
    with pytest.raises(nats.js.errors.APIError):
        await jsm.purge_stream(names.stream)
    with pytest.raises(nats.js.errors.APIError):
        await jsm.delete_msg(names.stream, 1)


async def audit(db: Database, tmp_path: Path, *args: str, **variables: str) -> Result:
    env = {
        "MODELREG_DATABASE_URL": db.url,
        "MODELREG_DB_SCHEMA": db.schema,
        "MODELREG_DB_APP_ROLE": db.app_role,
        "MODELREG_DATA_DIR": str(tmp_path / "data"),
        **{f"MODELREG_{name.upper()}": value for name, value in variables.items()},
    }
    return await asyncio.to_thread(lambda: CliRunner().invoke(app, list(args), env=env))


async def test_the_cli_names_the_cut_with_a_checkpoint_directory(
    sealed: Database, tmp_path: Path
) -> None:
    # given a checkpoint directory and the public key, copied where an auditor keeps them
    checkpointer = await checkpoint_now(sealed, tmp_path)
    options = (
        "--checkpoints",
        str(checkpointer.config.directory),
        "--public-key",
        str(public_key_path(checkpointer.config.key_path)),
    )
    # when verify runs on the untouched store: ok
    untouched = await audit(sealed, tmp_path, "verify", "--json", *options)
    assert untouched.exit_code == 0, untouched.output
    assert json.loads(untouched.stdout)["checkpoints_checked"] == 1
    # when it runs after a consistent truncation
    await truncate_consistently(sealed, keep=6)
    cut = await audit(sealed, tmp_path, "verify", *options)
    # then it exits 1 and names the break
    assert cut.exit_code == 1, cut.output
    assert "log position 7 (truncated_tail)" in cut.stderr


async def test_the_cli_reads_the_checkpoints_from_the_stream(
    sealed: Database, tmp_path: Path, nats_url: str, nc: NatsClient, names: Names
) -> None:
    # given a checkpoint published to the stream
    spec = StreamSpec(name=names.stream, subject_prefix=f"{names.prefix}.checkpoints")
    checkpointer = Checkpointer(
        sealed.connect, nats_factory(nats_url), config(sealed, tmp_path, stream=spec)
    )
    await checkpointer.checkpoint_once(await sealed.connect())
    try:
        assert await checkpointer.publish_pending() == 1
    finally:
        await checkpointer.close()
    await truncate_consistently(sealed, keep=6)
    # when verify reads the checkpoints from that stream
    result = await audit(
        sealed,
        tmp_path,
        "verify",
        "--checkpoints",
        "stream",
        "--public-key",
        str(public_key_path(checkpointer.config.key_path)),
        nats_url=nats_url,
        checkpoint_stream=names.stream,
    )
    # then the cut is named
    assert result.exit_code == 1, result.output
    assert "log position 7 (truncated_tail)" in result.stderr


async def test_the_cli_refuses_to_prove_against_no_checkpoints(
    sealed: Database, tmp_path: Path
) -> None:
    # given a key but an empty checkpoint directory
    checkpointer = await checkpoint_now(sealed, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    # when verify is asked to prove the log against it
    result = await audit(
        sealed,
        tmp_path,
        "verify",
        "--checkpoints",
        str(empty),
        "--public-key",
        str(public_key_path(checkpointer.config.key_path)),
    )
    # then it cannot start: an empty set proves nothing
    assert result.exit_code == 2
    assert "no signed checkpoints" in result.stderr
