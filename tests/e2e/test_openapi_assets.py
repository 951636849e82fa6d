"""``/schema`` works offline: every script, style and icon its viewers load is served by the
app itself, from the files vendored in service/api/static."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from service.api.app import create_app
from service.api.openapi import STATIC
from tests.support.api import Api, running_api
from tests.support.database import Database

VIEWERS = ["/schema", "/schema/redoc", "/schema/swagger"]
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
# What a page loads: <script src>, <link href> (styles, icons).
LOADED = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)=["']([^"']+)["']""", re.IGNORECASE)


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        yield running


async def assert_loads_only_its_own_assets(client: httpx.AsyncClient, page: str) -> None:
    response = await client.get(page)
    assert response.status_code == 200, (page, response.status_code)
    assert response.headers["content-type"].startswith("text/html")
    loaded = LOADED.findall(response.text)
    assert any(url.endswith(".js") for url in loaded), (page, loaded)
    for url in loaded:
        parts = urlsplit(urljoin(str(response.url), url))
        assert (parts.scheme, parts.netloc) == ("http", "modelreg.test"), (page, url)
        asset = await client.get(parts.path)
        assert asset.status_code == 200, (page, url, asset.status_code)
        suffix = parts.path[parts.path.rfind(".") :]
        assert CONTENT_TYPES[suffix] in asset.headers["content-type"], (url, asset.headers)
        vendored = STATIC / parts.path.removeprefix("/schema/static/")
        assert asset.content == vendored.read_bytes(), url


@pytest.mark.parametrize("page", VIEWERS)
async def test_the_api_documentation_loads_nothing_from_another_host(api: Api, page: str) -> None:
    await assert_loads_only_its_own_assets(api.client, page)


async def test_swagger_ui_gets_its_bundle_preset_and_styles(api: Api) -> None:
    page = (await api.client.get("/schema/swagger")).text
    loaded = {url.rsplit("/", 1)[-1] for url in LOADED.findall(page)}
    assert {
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "swagger-ui.css",
    } <= loaded
    assets = await api.client.get("/schema/static/swagger-ui/swagger-ui-bundle.js")
    assert "max-age=86400" in assets.headers["cache-control"]


async def test_a_worker_serves_the_same_documentation_without_the_api() -> None:
    # The worker role's app (create_app without the API) documents its health endpoints.
    transport = httpx.ASGITransport(app=create_app(None, api=False))  # type: ignore[arg-type]  # Litestar's scope types are narrower
    async with httpx.AsyncClient(transport=transport, base_url="http://modelreg.test") as client:
        for page in VIEWERS:
            await assert_loads_only_its_own_assets(client, page)
        document = (await client.get("/schema/openapi.json")).json()
        assert "/health/ready" in document["paths"]
