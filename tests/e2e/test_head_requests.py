"""HEAD on every GET route: the GET's status and headers, no body (RFC 9110 9.3.2)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from events.access import Role
from tests.support.api import Api, running_api
from tests.support.database import Database

M = "/api/v1/models"
# Headers that differ between any two answers, whatever the method.
PER_ANSWER = {"date", "modelreg-correlation-id", "x-request-id"}


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        assert (await running.post(M, json={"name": "churn"})).status_code == 201
        yield running


def head_of(answer: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in answer.headers.items() if k not in PER_ANSWER}


@pytest.mark.parametrize("path", ["/api/v1/me", f"{M}/churn", f"{M}?limit=5"])
async def test_a_head_answers_what_the_get_would_without_the_body(api: Api, path: str) -> None:
    # given what a GET answers
    got = await api.get(path)
    assert got.status_code == 200, got.text
    assert got.content

    # when the same resource is asked with HEAD
    headed = await api.request("HEAD", path)

    # then the status and the headers are the GET's (its length and ETag too), with no body
    assert headed.status_code == 200
    assert headed.content == b""
    assert head_of(headed) == head_of(got)
    assert int(headed.headers["content-length"]) == len(got.content)


async def test_a_head_is_authenticated_and_authorised_as_the_get_is(api: Api) -> None:
    # given a caller with no token and one whose scope is another model
    fraud_only = await api.token("ci", Role.READER, scopes=("fraud",))

    # when each asks HEAD of churn
    anonymous = await api.client.request("HEAD", f"{M}/churn")
    outside = await api.request("HEAD", f"{M}/churn", as_=fraud_only)

    # then they get the GET's refusals, heads only
    assert (anonymous.status_code, anonymous.content) == (401, b"")
    assert anonymous.headers["content-type"].startswith("application/problem+json")
    assert (outside.status_code, outside.content) == (403, b"")


async def test_a_head_of_what_is_missing_or_not_a_get_route_says_so(api: Api) -> None:
    # when HEAD names a model nobody has, a path no route serves, and a POST-only route
    missing = await api.request("HEAD", f"{M}/nobody")
    nowhere = await api.request("HEAD", "/api/v1/nowhere")
    post_only = await api.request("HEAD", "/api/2.0/mlflow/registered-models/create")

    # then 404, 404 and 405, with no body
    assert (missing.status_code, missing.content) == (404, b"")
    assert (nowhere.status_code, nowhere.content) == (404, b"")
    assert (post_only.status_code, post_only.content) == (405, b"")
