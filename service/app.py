"""The HTTP application factory. I/O: none itself; handlers reach Postgres and NATS through
the ``AppState`` that the runtime builds once per process and injects (no globals).

Later issues add the API v1 by listing their routers in ``api_route_handlers()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import asyncpg
from litestar import Litestar, Response, Router, get
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.types import ControllerRouterHandler
from nats.aio.client import Client as NatsClient

from service.health import Live, NotReady, Ready, check
from service.settings import Settings

PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True, slots=True, eq=False)
class AppState:
    """The process's shared resources. ``nats`` exists from the start but may not be
    connected yet (or any more): it reconnects forever, and writes never wait for it."""

    settings: Settings
    database_url: str
    nats_url: str
    pool: asyncpg.Pool
    nats: NatsClient


def api_route_handlers() -> list[ControllerRouterHandler]:
    """The API v1 routers; each issue that adds endpoints lists its router here."""
    return []


@get("/live", sync_to_thread=False)
def live() -> Live:
    """The process is up and its event loop answers; checks nothing else."""
    return Live()


@get("/ready")
async def ready(app_state: AppState | None) -> Response[Ready | NotReady]:
    """200 when the database answers, migrations are applied and NATS is connected."""
    checks, reasons = await check(
        app_state.pool if app_state else None, app_state.nats if app_state else None
    )
    if checks.ready:
        return Response(Ready(checks=checks))
    detail = "; ".join(reasons) if app_state else "runtime not started"
    return Response(
        NotReady(detail=detail, checks=checks), status_code=503, media_type=PROBLEM_JSON
    )


health_router = Router("/health", route_handlers=[live, ready], tags=["health"])


def create_app(state: AppState | None = None, *, api: bool = True, debug: bool = False) -> Litestar:
    """Build the app; ``api=False`` serves only the health endpoints (the worker role).

    ``state=None`` gives an app whose readiness always fails: for tests of the HTTP layer
    that need no database.
    """
    handlers: list[ControllerRouterHandler] = [health_router]
    if api:
        handlers.extend(api_route_handlers())
    return Litestar(
        route_handlers=handlers,
        dependencies={"app_state": Provide(lambda: state, use_cache=True, sync_to_thread=False)},
        openapi_config=OpenAPIConfig(title="modelreg", version=_version(), path="/schema"),
        # The process configures logging once (service.cli); Litestar's default would replace it.
        logging_config=None,
        debug=debug,
    )


def _version() -> str:
    try:
        return version("modelreg")
    except PackageNotFoundError:
        return "0+unknown"
