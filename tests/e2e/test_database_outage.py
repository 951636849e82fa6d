"""A Postgres outage, made real by cutting a TCP proxy in front of the real server: the API
answers 503 problem+json with Retry-After (never 500), and the Python client retries
with the same Idempotency-Key until the database is back, recording the write once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from litestar import Litestar

from events.streams import MODEL_TYPE
from service.api.router import api_app_kwargs
from service.client import AsyncClient, RetryPolicy
from tests.support.api import Api, running_api
from tests.support.database import Database, create_database, drop_schema
from tests.support.tcp_proxy import CuttableProxy

# Enough attempts to outlast the outage the test arranges; short waits so it ends quickly.
PATIENT = RetryPolicy(attempts=50, backoff=0.05, max_backoff=0.2, max_retry_after=0.2)


@dataclass
class Outage:
    api: Api
    proxy: CuttableProxy
    db: Database


@pytest.fixture
async def outage(database_url: str) -> AsyncIterator[Outage]:
    """A registry whose every connection to Postgres runs through a cuttable proxy."""
    async with CuttableProxy.in_front_of(database_url) as proxy:
        db = await create_database(proxy.url_for(database_url))
        try:
            async with running_api(db) as api:
                yield Outage(api, proxy, db)
        finally:
            await proxy.restore()  # so the pool can close cleanly and the schema be dropped
            await db.close()
            await drop_schema(database_url, db.schema)


class Recording(httpx.AsyncBaseTransport):
    """Passes requests to the app; keeps each request and its answer's status."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.seen: list[tuple[httpx.Request, int]] = []
        self.unavailable = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.seen.append((request, response.status_code))
        if response.status_code == 503:
            self.unavailable.set()
        return response


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["retry-after"].isdigit()
    problem = response.json()
    assert problem["code"] == "unavailable"
    assert problem["status"] == 503


async def test_reads_and_writes_during_an_outage_answer_503_with_retry_after(
    outage: Outage,
) -> None:
    # given a registry with a model, whose database then becomes unreachable
    created = await outage.api.post("/api/v1/models", json={"name": "churn"})
    assert created.status_code == 201, created.text
    await outage.proxy.cut()

    # when a client reads, writes with and without an Idempotency-Key
    read = await outage.api.get("/api/v1/models/churn")
    keyed = await outage.api.post(
        "/api/v1/models", json={"name": "fraud"}, headers={"Idempotency-Key": "k-outage"}
    )
    unkeyed = await outage.api.post("/api/v1/models", json={"name": "fraud"})

    # then each is told to come back later, never that the server failed
    for response in (read, keyed, unkeyed):
        assert_unavailable(response)


async def test_the_client_retries_through_an_outage_and_the_write_is_recorded_once(
    outage: Outage,
) -> None:
    # given the database is unreachable
    await outage.proxy.cut()
    recording = Recording(httpx.ASGITransport(app=Litestar(**api_app_kwargs(outage.api.services))))  # type: ignore[arg-type]
    client = AsyncClient(
        "http://modelreg.test", outage.api.admin, transport=recording, retry=PATIENT
    )

    # when the client creates a model, and the database comes back after it was refused
    write = asyncio.create_task(client.create_model("churn"))
    await asyncio.wait_for(recording.unavailable.wait(), 30)
    await outage.proxy.restore()
    receipt = await asyncio.wait_for(write, 60)
    await client.aclose()

    # then the write succeeded once, every attempt carrying one Idempotency-Key
    assert receipt.model == "churn"
    statuses = [status for _, status in recording.seen]
    assert statuses[0] == 503 and statuses[-1] == 201, statuses
    keys = {request.headers["idempotency-key"] for request, _ in recording.seen}
    assert len(keys) == 1
    assert len(await outage.api.services.store.stream_ids(MODEL_TYPE)) == 1
