"""A real registry behind an in-process HTTP client: the API app, the sealer and the
projection worker running on a fresh schema of the real Postgres."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from litestar.plugins import PluginProtocol

from eventlog.sealer import Sealer, sealed_channel
from events.access import Role
from projections.registry_state import all_projections
from projections.runner import ProjectionWorker
from service.api.app import api_and_ui_app_kwargs, litestar_app
from service.api.router import api_app_kwargs
from service.api.services import Services
from service.commands.token_secrets import Pepper
from service.commands.tokens import ensure_bootstrap_token, issue_token
from service.runtime.composition import build_services
from service.settings import Settings, load_settings
from tests.support.database import Database
from tests.support.waiting import eventually


@dataclass
class Api:
    client: httpx.AsyncClient
    services: Services
    admin: str  # the bootstrap admin's secret
    transport: httpx.AsyncBaseTransport | None = None

    def browser(self) -> httpx.AsyncClient:
        """A client of its own on the same app, keeping its cookies as a browser does (the
        caller closes it): one per person logged in to the UI."""
        assert self.transport is not None
        return httpx.AsyncClient(transport=self.transport, base_url=str(self.client.base_url))

    def auth(self, secret: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret or self.admin}"}

    async def token(self, principal: str, *roles: Role, scopes: tuple[str, ...] = ()) -> str:
        _, secret = await issue_token(
            self.services.executor,
            self.services.pepper,
            actor="admin",
            principal=principal,
            roles=roles,
            scopes=scopes,
        )
        return secret

    async def request(
        self, method: str, path: str, *, as_: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {**self.auth(as_), **kwargs.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PUT", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("DELETE", path, **kwargs)


async def views_created(db: Database, worker: ProjectionWorker) -> None:
    wanted = {p.name for p in worker.projections}

    async def created() -> bool:
        rows = await db.pool.fetch(
            "SELECT projection FROM projection_checkpoints WHERE status = 'live'"
        )
        return wanted <= {r["projection"] for r in rows}

    await eventually(created, what="the projection worker created its views")


@asynccontextmanager
async def running_api(
    db: Database,
    settings: Settings | None = None,
    *,
    plugins: Sequence[PluginProtocol] = (),
    ui: bool = False,
) -> AsyncIterator[Api]:
    """The registry; ``ui``: the web UI served beside the API, as ``modelreg serve`` does."""
    # Blobs go under the data dir: each registry gets a fresh one, never the user's.
    scratch = tempfile.TemporaryDirectory(prefix="modelreg-api-")
    settings = settings or load_settings(
        {}, db_schema=db.schema, read_wait_timeout=10.0, data_dir=Path(scratch.name)
    )
    sealer = Sealer(db.connect, db.schema)
    services = build_services(
        settings, db.pool, pepper=Pepper.generate(), on_append=lambda _: sealer.wake()
    )
    worker = ProjectionWorker(
        db.connect,
        db.schema,
        all_projections(),
        channel=sealed_channel(db.schema),
        poll_interval=0.05,
    )
    stop = asyncio.Event()
    tasks = [asyncio.create_task(sealer.run(stop)), asyncio.create_task(worker.run(stop))]
    try:
        # A test starts once the worker has created every view: a read before that would be
        # a race with the worker's start (answered 503), not what a test means to exercise.
        await views_created(db, worker)
        admin = await ensure_bootstrap_token(services.executor, services.pepper, None)
        assert admin is not None
        served = api_and_ui_app_kwargs(services) if ui else api_app_kwargs(services)
        app = litestar_app(**served, plugins=list(plugins))
        # ASGITransport runs the app in this event loop, where the pool lives.
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # Litestar's scope types are narrower
        async with httpx.AsyncClient(
            transport=transport, base_url="http://modelreg.test"
        ) as client:
            yield Api(client, services, admin, transport)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await services.executor.drain()
        scratch.cleanup()
