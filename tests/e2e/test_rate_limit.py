"""Expensive reads (``as_of``: the log folded again) are limited per token: over its budget a
token gets 429 with Retry-After, before any folding; other tokens and live reads go on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from events.access import Role
from service.settings import load_settings
from tests.support.api import Api, running_api
from tests.support.database import Database


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    # A burst of two, refilled so slowly that no read comes back during the test.
    settings = load_settings(
        {},
        db_schema=db.schema,
        read_wait_timeout=10.0,
        expensive_read_burst=2,
        expensive_read_rate=0.001,
    )
    async with running_api(db, settings) as running:
        yield running


async def test_a_token_over_its_as_of_budget_gets_429_and_others_go_on(api: Api) -> None:
    # given two readers
    greedy = await api.token("greedy", Role.READER)
    other = await api.token("other", Role.READER)

    # when the first sends three registry-wide as_of reads
    answers = [await api.get("/api/v1/models?as_of=1", as_=greedy) for _ in range(3)]

    # then two are answered and the third is refused with when to retry, naming the field
    assert [a.status_code for a in answers] == [200, 200, 429]
    refused = answers[2]
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert int(refused.headers["retry-after"]) >= 1
    problem = refused.json()
    assert (problem["code"], problem["field"], problem["rule"]) == (
        "rate_limited",
        "as_of",
        "rate_limit",
    )
    # and its live reads, and the other reader's as_of reads, are still answered
    assert (await api.get("/api/v1/models", as_=greedy)).status_code == 200
    assert (await api.get("/api/v1/models?as_of=1", as_=other)).status_code == 200
