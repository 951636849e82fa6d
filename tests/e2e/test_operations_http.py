"""The global log feed and the scoped promotion list through HTTP: what the handlers now
ask the event log's named lookups for (the log as stored, models' names)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from events.access import Role
from tests.support.api import Api, running_api
from tests.support.database import Database

M = "/api/v1/models"
ARTIFACT = {
    "path": "model.pkl",
    "external": True,
    "uri": "s3://models/model.pkl",
    "sha256": "ab" * 32,
    "size": 100,
}
CHAMPION = {"version": 1, "alias": "champion", "justification": "best so far"}
POLICY = {
    "policy": {"protected_aliases": [{"alias": "champion", "approvals": 1}]},
    "comment": "the champion alias needs an approval",
}


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        yield running


def ok(response: httpx.Response, status: int = 200) -> httpx.Response:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response


async def test_paging_one_models_log_by_type_goes_on_past_pages_the_filter_emptied(
    api: Api,
) -> None:
    # given a model whose history starts with events of other types than the one wanted
    ok(await api.post(M, json={"name": "churn"}), 201)
    for n in range(3):
        ok(await api.put(f"{M}/churn/tags/t{n}", json={"value": "x"}))
    removed = ok(await api.delete(f"{M}/churn/tags/t0"))
    wanted = int(removed.headers["Modelreg-Position"])

    # when the client pages through it, two events read per page, keeping one type
    found: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        page = ok(
            await api.get(
                "/api/v1/events",
                params={"model": "churn", "type": "model.tags_removed", "limit": 2, "after": after},
            )
        ).json()
        found += page["items"]
        after = page["next_after"]

    # then it reaches the one event of that type, although the first page held none
    assert [item["log_position"] for item in found] == [wanted]
    assert found[0]["envelope"]["event_type"] == "model.tags_removed"


async def test_the_global_log_hands_out_each_envelope_as_stored(api: Api) -> None:
    # given a few recorded events
    ok(await api.post(M, json={"name": "churn", "tags": {"team": "risk"}}), 201)
    ok(await api.put(f"{M}/churn/tags/owner", json={"value": "ana"}))

    # when the log is read through HTTP
    response = ok(await api.get("/api/v1/events", params={"limit": 100}))

    # then each envelope is the stored JSON, byte for byte
    stored = {
        r["log_position"]: bytes(r["envelope"])
        for r in await api.services.pool.fetch(
            "SELECT l.log_position, e.envelope FROM event_log l JOIN events e USING (seq)"
        )
    }
    items = response.json()["items"]
    assert [i["log_position"] for i in items] == sorted(stored)
    for item in items:
        assert stored[item["log_position"]] in response.content


async def test_a_scoped_caller_lists_only_the_promotions_of_models_in_its_scope(
    api: Api,
) -> None:
    # given open promotion requests on a model inside the caller's scope and one outside
    ok(await api.put("/api/v1/policy", json=POLICY))
    for name in ("churn", "fraud-eu", "fraud-us"):
        ok(await api.post(M, json={"name": name}), 201)
        ok(await api.post(f"{M}/{name}/versions", json={"artifacts": [ARTIFACT]}), 201)
    requested = {
        name: ok(await api.post(f"{M}/{name}/promotions", json=CHAMPION), 202).json()["request_id"]
        for name in ("churn", "fraud-eu")
    }
    # renamed after its request: the scope follows the model's current name
    renamed = ok(await api.post(f"{M}/fraud-eu/rename", json={"new_name": "fraud-de"}))
    # the listing is a projection: each read waits for it to hold every write above
    caught_up = {"min_position": renamed.headers["Modelreg-Position"]}
    mallory = await api.token("mallory", Role.READER, scopes=("fraud*",))
    outsider = await api.token("olga", Role.READER, scopes=("churn",))

    # when each lists the open requests
    def listed(response: httpx.Response) -> set[str]:
        return {r["request_id"] for r in ok(response).json()}

    promotions = "/api/v1/promotions"
    seen_by_mallory = listed(await api.get(promotions, params=caught_up, as_=mallory))
    seen_by_olga = listed(await api.get(promotions, params=caught_up, as_=outsider))
    seen_by_admin = listed(await api.get(promotions, params=caught_up))

    # then each sees the requests of its own models only; the admin sees all
    assert seen_by_mallory == {requested["fraud-eu"]}
    assert seen_by_olga == {requested["churn"]}
    assert seen_by_admin == set(requested.values())
