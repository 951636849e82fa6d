"""Postgres going away while a session commits, after the blob was published and before
its event was written: the commit answers a retryable 503, the session stays, and the
retried commit records the blob once. Real Postgres behind a TCP proxy the test cuts; the
event table is locked from a direct connection so the commit waits exactly there."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from eventlog.db import connect
from events.streams import artifacts_stream
from service.artifacts.blobstore import blob_key
from service.artifacts.local import LocalBlobStore
from tests.support.api import Api, running_api
from tests.support.database import Database, create_database, drop_schema
from tests.support.tcp_proxy import CuttableProxy
from tests.support.waiting import eventually

M = "/api/v1/models"
BODY = bytes(range(256)) * 4096
HEX = hashlib.sha256(BODY).hexdigest()


@dataclass
class Outage:
    api: Api
    proxy: CuttableProxy
    db: Database
    direct_url: str


@pytest.fixture
async def outage(database_url: str) -> AsyncIterator[Outage]:
    async with CuttableProxy.in_front_of(database_url) as proxy:
        db = await create_database(proxy.url_for(database_url))
        try:
            async with running_api(db) as api:
                yield Outage(api, proxy, db, database_url)
        finally:
            await proxy.restore()  # so the pool can close cleanly and the schema be dropped
            await db.close()
            await drop_schema(database_url, db.schema)


async def test_a_commit_cut_off_from_the_database_keeps_the_session_for_a_retry(
    outage: Outage,
) -> None:
    api = outage.api
    assert isinstance(api.services.blobs, LocalBlobStore)
    blob = api.services.blobs.root / blob_key(HEX)
    assert (await api.post(M, json={"name": "churn"})).status_code == 201
    opened = await api.post(
        f"{M}/churn/uploads", json={"digest": f"sha256:{HEX}", "size": len(BODY)}
    )
    location = opened.json()["location"]
    sent = await api.patch(location, content=BODY, headers={"Content-Range": f"0-{len(BODY) - 1}"})
    assert sent.json()["offset"] == len(BODY)

    # given appends held back by a lock on the event table (reads still pass)
    locker = await connect(outage.direct_url, schema=outage.db.schema, app_role=None)
    held = locker.transaction()
    await held.start()
    await locker.execute("LOCK TABLE events IN EXCLUSIVE MODE")
    try:
        # when the commit has published the blob and waits to record it, Postgres goes away
        committing = asyncio.create_task(api.put(location))
        await eventually(blob.exists, what="the commit published the blob", timeout=30)
        await outage.proxy.cut()
        answer = await committing
    finally:
        await held.rollback()
        await locker.close()

    # then the commit answers a retryable 503
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"].isdigit()
    # and once Postgres is back the session is still there, whole, and commits
    await outage.proxy.restore()

    async def session_whole() -> bool:
        status = await api.get(location)
        return status.status_code == 200 and status.json()["offset"] == len(BODY)

    await eventually(session_whole, what="the session answers again", timeout=30)
    retried = await api.put(location)
    assert retried.status_code in (200, 201), retried.text  # 200: the cut append landed
    assert (await api.get(location)).status_code == 404
    model_id = await api.services.registry.model_id("churn")
    recorded = await api.services.store.read_stream(artifacts_stream(model_id))
    assert [e.envelope.event_type for e in recorded] == ["artifact.blob_stored"]
    assert blob.read_bytes() == BODY
