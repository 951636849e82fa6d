"""``/metrics``: requests by route template and real status, the registry's own counters,
process metrics and the pipeline lags, for readers only.

The series live in prometheus-client's process registry, shared by every app this test
session builds, so counters are compared before and after the requests under test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventlog.freshness import wait_for_position
from eventlog.log import head_position
from events.access import Role
from projections.registry_state import all_projections
from tests.support.api import Api, running_api
from tests.support.database import Database

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        yield running


async def scrape(api: Api) -> Series:
    response = await api.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, frozenset(labels.items())), 0.0)


def requests(series: Series, method: str, path: str, status: int) -> float:
    return value(
        series,
        "modelreg_http_requests_total",
        method=method,
        path=path,
        status_code=str(status),
        app_name="modelreg",
    )


async def test_metrics_need_a_token_with_the_read_permission(api: Api) -> None:
    assert (await api.client.get("/metrics")).status_code == 401
    reader = await api.token("rita", Role.READER)
    assert (await api.get("/metrics", as_=reader)).status_code == 200


async def test_requests_are_counted_by_route_template_with_the_status_the_client_got(
    api: Api,
) -> None:
    # given a model, and the counters as they stand
    assert (await api.post("/api/v1/models", json={"name": "churn"})).status_code == 201
    reader = await api.token("rita", Role.READER)
    before = await scrape(api)

    # when it is read twice under two names, refused a write, and asked without a token
    for name in ("churn", "no-such-model"):
        await api.get(f"/api/v1/models/{name}")
    refused = await api.post("/api/v1/models", json={"name": "fraud"}, as_=reader)
    anonymous = await api.client.get("/api/v1/models/churn")
    after = await scrape(api)

    # then each is counted once under the route's template, never its raw path
    template = "/api/v1/models/{name}"
    assert requests(after, "GET", template, 200) - requests(before, "GET", template, 200) == 1
    assert requests(after, "GET", template, 404) - requests(before, "GET", template, 404) == 1
    assert not [key for key in after if ("path", "/api/v1/models/churn") in key[1]]
    # and a refusal by the authentication middleware counts as the 401 it answered
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="modelreg"'
    assert anonymous.json()["code"] == "unauthenticated"
    assert requests(after, "GET", template, 401) - requests(before, "GET", template, 401) == 1
    assert requests(after, "GET", template, 500) == requests(before, "GET", template, 500)
    # and the missing permission is counted by name
    assert refused.status_code == 403
    denied = "modelreg_denied_total"
    assert value(after, denied, permission="write") - value(before, denied, permission="write") == 1
    latency = "modelreg_http_request_duration_seconds_count"
    labels = {"method": "GET", "path": template, "status_code": "200", "app_name": "modelreg"}
    assert value(after, latency, **labels) - value(before, latency, **labels) == 1


async def test_an_unknown_token_is_counted_as_unauthenticated(api: Api) -> None:
    before = await scrape(api)
    unknown = await api.get("/api/v1/models", as_="mr_" + "x" * 43)
    after = await scrape(api)
    assert unknown.status_code == 401
    counter = "modelreg_unauthenticated_total"
    assert value(after, counter) - value(before, counter) == 1


async def test_the_process_is_described(api: Api) -> None:
    series = await scrape(api)
    names = {name for name, _ in series}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names
    assert value(series, "process_open_fds") > 0


async def test_the_lags_are_read_from_the_database_at_each_scrape(api: Api) -> None:
    # given some history that every view has applied
    for name in ("churn", "fraud"):
        assert (await api.post("/api/v1/models", json={"name": name})).status_code == 201
    head = await head_position(api.services.pool)
    await wait_for_position(
        api.services.pool, head, [p.name for p in all_projections()], timeout=60
    )
    # and a relay that has published up to position 1 (no relay runs in this test)
    await api.services.pool.execute(
        "INSERT INTO publication_checkpoints (publisher, log_position) VALUES ($1, 1)",
        "nats:MODELREG_EVENTS",
    )

    series = await scrape(api)

    assert value(series, "modelreg_log_head_position") == head
    assert value(series, "modelreg_sealer_lag_events") == 0
    for projection in all_projections():
        lag = value(series, "modelreg_projection_lag_events", projection=projection.name)
        assert (projection.name, lag) == (projection.name, 0)
    relay = value(series, "modelreg_relay_lag_events", publisher="nats:MODELREG_EVENTS")
    assert relay == head - 1
