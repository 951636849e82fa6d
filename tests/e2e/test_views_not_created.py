"""An API process that answers before the projection worker has ever run (role "api" started
first, or the first moments of a fresh registry) says "retry shortly", not 500."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import httpx
from litestar import Litestar

from projections.runner import ensure_projection
from projections.views.model_catalogue import CATALOGUE
from projections.views.model_versions import VERSIONS
from service.api.router import api_app_kwargs
from service.commands.token_secrets import Pepper
from service.commands.tokens import ensure_bootstrap_token
from service.runtime.composition import build_services
from service.settings import load_settings
from tests.support.database import Database


async def test_a_read_before_the_views_exist_is_a_503_with_retry_after(db: Database) -> None:
    # given an API on a migrated database whose projection worker has not run yet
    with tempfile.TemporaryDirectory() as scratch:
        settings = load_settings({}, db_schema=db.schema, data_dir=Path(scratch))
        services = build_services(settings, db.pool, pepper=Pepper.generate())
        admin = await ensure_bootstrap_token(services.executor, services.pepper, None)
        app = Litestar(**api_app_kwargs(services))
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(
            transport=transport, base_url="http://modelreg.test"
        ) as client:
            # when a reader lists the models
            answer = await client.get(
                "/api/v1/models", headers={"Authorization": f"Bearer {admin}"}
            )
            await services.executor.drain()
    # then it is told to retry shortly, in problem+json
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "not created yet" in answer.json()["detail"]


async def test_a_read_of_views_older_code_created_is_a_503_with_retry_after(
    db: Database,
) -> None:
    # given the catalogue of this code, and a versions view with the shape the code before
    # environments created (no environments column), not yet rebuilt
    conn = await db.connect()
    await ensure_projection(conn, CATALOGUE)
    older = dataclasses.replace(
        VERSIONS,
        version=1,
        tables=[
            dataclasses.replace(t, columns=t.columns.replace("environments       text[]", "--"))
            if t.name == "model_versions"
            else t
            for t in VERSIONS.tables
        ],
    )
    await ensure_projection(conn, older)
    with tempfile.TemporaryDirectory() as scratch:
        settings = load_settings({}, db_schema=db.schema, data_dir=Path(scratch))
        services = build_services(settings, db.pool, pepper=Pepper.generate())
        admin = await ensure_bootstrap_token(services.executor, services.pepper, None)
        app = Litestar(**api_app_kwargs(services))
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        auth = {"Authorization": f"Bearer {admin}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://modelreg.test"
        ) as client:
            created = await client.post("/api/v1/models", json={"name": "churn"}, headers=auth)
            assert created.status_code == 201, created.text
            # when a reader lists the model's versions
            answer = await client.get("/api/v1/models/churn/versions", headers=auth)
            await services.executor.drain()
    # then it is told to retry shortly, in problem+json, not a 500
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "1"
    assert "being rebuilt" in answer.json()["detail"]
