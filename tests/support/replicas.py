"""A second API process on the same database, in this event loop: its own registry,
caches and executor, as another replica behind a load balancer would have."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from service.api.app import litestar_app
from service.api.router import api_app_kwargs
from service.runtime.composition import build_services
from tests.support.api import Api


@asynccontextmanager
async def another_replica(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a second API process beside ``api``, authenticated as its admin."""
    services = build_services(api.services.settings, api.services.pool, pepper=api.services.pepper)
    app = litestar_app(**api_app_kwargs(services))
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # Litestar's scope types are narrower
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://replica.test", headers=api.auth()
        ) as client:
            yield client
    finally:
        await services.executor.drain()
