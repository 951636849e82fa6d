"""Every request's correlation id is recorded in the envelopes of the events it appends
and said back in ``Modelreg-Correlation-Id``: the W3C trace id of its ``traceparent``
(honoured with tracing off, as here), else a fresh one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.api import Api, running_api
from tests.support.database import Database

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
ARTIFACT = {
    "path": "model.pkl",
    "external": True,
    "uri": "s3://b/churn/1/model.pkl",
    "sha256": "a" * 64,
    "size": 1,
}


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        yield running


async def recorded_correlations(api: Api, model: str) -> list[str | None]:
    """The correlation id in the envelope of each of the model's events, oldest first."""
    page = await api.get("/api/v1/events", params={"model": model})
    assert page.status_code == 200, page.text
    items: list[dict[str, Any]] = page.json()["items"]
    return [item["envelope"]["correlation_id"] for item in items]


async def test_the_trace_id_of_a_traceparent_becomes_the_correlation_id_of_each_event(
    api: Api,
) -> None:
    # given a request that continues a caller's trace
    created = await api.post(
        "/api/v1/models", json={"name": "churn"}, headers={"traceparent": TRACEPARENT}
    )
    assert created.status_code == 201, created.text

    # then the response says the trace id, as a UUID
    expected = str(uuid.UUID(TRACE_ID))
    assert created.headers["Modelreg-Correlation-Id"] == expected
    # and the event it recorded carries it, in the log and in the model's history
    assert await recorded_correlations(api, "churn") == [expected]
    history = await api.get(
        "/api/v1/models/churn/history",
        params={"min_position": created.headers["Modelreg-Position"]},
    )
    assert [entry["correlation_id"] for entry in history.json()["items"]] == [expected]


async def test_without_a_traceparent_each_request_gets_its_own_correlation_id(api: Api) -> None:
    # given two writes without a traceparent, the second appending two events at once
    created = await api.post("/api/v1/models", json={"name": "churn"})
    version = await api.post("/api/v1/models/churn/versions", json={"artifacts": [ARTIFACT]})
    assert (created.status_code, version.status_code) == (201, 201), version.text

    # then each got a fresh id, said back and recorded on every one of its events
    first = created.headers["Modelreg-Correlation-Id"]
    second = version.headers["Modelreg-Correlation-Id"]
    assert uuid.UUID(first) != uuid.UUID(second)
    recorded = await recorded_correlations(api, "churn")
    assert recorded[0] == first and set(recorded[1:]) == {second}


async def test_a_malformed_traceparent_is_ignored_not_refused(api: Api) -> None:
    # W3C Trace Context: a receiver that cannot parse traceparent starts afresh.
    for broken in ("00-xyz-00f067aa0ba902b7-01", f"00-{'0' * 32}-00f067aa0ba902b7-01", "junk"):
        created = await api.post(
            "/api/v1/models", json={"name": f"m-{len(broken)}"}, headers={"traceparent": broken}
        )
        assert created.status_code == 201, created.text
        said = uuid.UUID(created.headers["Modelreg-Correlation-Id"])
        assert said.int != 0 and said.hex != TRACE_ID


async def test_reads_and_refusals_say_their_correlation_id_too(api: Api) -> None:
    read = await api.get("/api/v1/me", headers={"traceparent": TRACEPARENT})
    anonymous = await api.client.get("/api/v1/me", headers={"traceparent": TRACEPARENT})
    missing = await api.get("/api/v1/models/nothing-here")
    assert (read.status_code, anonymous.status_code, missing.status_code) == (200, 401, 404)
    assert read.headers["Modelreg-Correlation-Id"] == str(uuid.UUID(TRACE_ID))
    assert anonymous.headers["Modelreg-Correlation-Id"] == str(uuid.UUID(TRACE_ID))
    assert uuid.UUID(missing.headers["Modelreg-Correlation-Id"])
