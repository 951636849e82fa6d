"""The OpenAPI document tells clients (and schemathesis) what the API really does: every
operation takes a bearer token and answers its errors as problem+json."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.api import running_api
from tests.support.database import Database

METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
async def document(db: Database) -> AsyncIterator[dict[str, Any]]:
    async with running_api(db) as api:
        response = await api.client.get("/schema/openapi.json")
        assert response.status_code == 200
        yield response.json()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


async def test_every_operation_declares_the_bearer_scheme(document: dict[str, Any]) -> None:
    # Given the document the API serves,
    schemes = document["components"]["securitySchemes"]
    # then it declares a bearer scheme, and every operation requires it.
    assert schemes["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearerAuth"]["description"],
    }
    unsecured = [
        f"{m} {p}" for p, m, o in operations(document) if o.get("security") != [{"bearerAuth": []}]
    ]
    assert not unsecured


async def test_every_operation_declares_its_errors_as_problem_json(
    document: dict[str, Any],
) -> None:
    # Given the document the API serves,
    problem = document["components"]["schemas"]["Problem"]
    assert {"type", "title", "status"} <= set(problem["properties"])
    # then every operation declares 400, 401, 403, 404, 413, 415 and 422 as problem+json.
    missing = [
        f"{method} {path} {status}"
        for path, method, operation in operations(document)
        for status in ("400", "401", "403", "404", "413", "415", "422")
        if list(operation["responses"].get(status, {}).get("content", {}))
        != ["application/problem+json"]
    ]
    assert not missing, missing
