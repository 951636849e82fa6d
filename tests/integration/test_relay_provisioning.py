"""Stream provisioning is idempotent, repairs what is safe to repair, and explains the rest."""

from __future__ import annotations

import asyncio

import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from service.publication.jetstream import StreamConfigError, ensure_stream
from tests.support.publication import Names, names, nc

__all__ = ["names", "nc"]  # fixtures


async def test_a_missing_stream_is_created_with_deliberate_settings_and_then_left_alone(
    nc: NatsClient, names: Names
) -> None:
    spec = names.spec()
    reports = await asyncio.gather(
        *(ensure_stream(nc, spec) for _ in range(4))
    )  # processes starting at once
    # creating an identical stream twice succeeds on the server, so each may report it
    assert "created" in {r.action for r in reports} <= {"created", "unchanged"}
    config = (await nc.jsm().stream_info(names.stream)).config
    assert config.subjects == [f"{names.prefix}.>"]
    assert config.storage == StorageType.FILE and config.retention == RetentionPolicy.LIMITS
    assert config.duplicate_window == 6 * 3600 and config.num_replicas == 1
    assert config.deny_delete and config.deny_purge and not config.allow_rollup_hdrs
    assert (await ensure_stream(nc, spec)).action == "unchanged"

    # and it refuses deletion of messages and purges
    ack = await nc.jetstream().publish(f"{names.prefix}.x", b"{}")
    with pytest.raises(nats.js.errors.APIError):
        await nc.jsm().delete_msg(names.stream, ack.seq)
    with pytest.raises(nats.js.errors.APIError):
        await nc.jsm().purge_stream(names.stream)


async def test_an_existing_stream_is_repaired_where_safe_and_each_change_is_reported(
    nc: NatsClient, names: Names
) -> None:
    await nc.jsm().add_stream(
        StreamConfig(
            name=names.stream,
            subjects=["legacy.events.>"],
            storage=StorageType.FILE,
            duplicate_window=120,
            allow_rollup_hdrs=True,
        )
    )
    report = await ensure_stream(nc, names.spec(duplicate_window=7200))
    assert report.action == "updated"
    assert report.changes == [
        f"subjects + {names.prefix}.>",
        "duplicate_window 120s -> 7200s",
        "deny_delete -> true",
        "deny_purge -> true",
        "allow_rollup_hdrs -> false",
    ]
    config = (await nc.jsm().stream_info(names.stream)).config
    assert config.subjects == ["legacy.events.>", f"{names.prefix}.>"]  # nothing of theirs removed
    assert config.duplicate_window == 7200 and config.deny_delete and config.deny_purge


@pytest.mark.parametrize(
    ("existing", "message"),
    [
        ({"storage": StorageType.MEMORY}, "memory storage"),
        ({"retention": RetentionPolicy.WORK_QUEUE}, "workqueue retention"),
        ({"retention": RetentionPolicy.INTEREST}, "interest retention"),
        ({"max_age": 60.0, "duplicate_window": 60.0}, "less than the duplicate window"),
    ],
)
async def test_differences_that_cannot_be_fixed_in_place_are_explained(
    nc: NatsClient, names: Names, existing: dict[str, object], message: str
) -> None:
    await nc.jsm().add_stream(
        StreamConfig(name=names.stream, subjects=[f"{names.prefix}.>"], **existing)  # type: ignore[arg-type]
    )
    with pytest.raises(StreamConfigError, match=message) as refused:
        await ensure_stream(nc, names.spec())
    assert names.stream in str(refused.value)


async def test_three_replicas_on_a_single_server_are_refused_with_the_reason(
    nc: NatsClient, names: Names
) -> None:
    with pytest.raises(StreamConfigError, match="MODELREG_NATS_REPLICAS=3 needs a NATS cluster"):
        await ensure_stream(nc, names.spec(replicas=3))
