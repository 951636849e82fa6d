"""The HTTP application factory. I/O: none itself; handlers reach Postgres and NATS through
the ``AppState`` that the runtime builds once per process and injects (no globals).

The API v1 (``service.api``) is mounted when the process serves it (roles all and api).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from litestar import Litestar, Request, Response, Router, get
from litestar.datastructures import State
from litestar.types import ControllerRouterHandler
from nats.aio.client import Client as NatsClient

from eventlog.positions import SealSignal
from eventlog.sealer import Sealer
from service.api.head_requests import serve_head_as_get
from service.api.health import Live, NotReady, Ready, check
from service.api.openapi import openapi_app_kwargs
from service.api.problems import EXCEPTION_HANDLERS
from service.api.router import api_app_kwargs, exact_document
from service.api.services import Services
from service.api.tracing import tracing_plugins
from service.settings import Settings
from service.ui.app import ui_app_kwargs

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
    services: Services
    sealer: Sealer
    seal_signal: SealSignal


@get("/live", sync_to_thread=False)
def live() -> Live:
    """The process is up and its event loop answers; checks nothing else."""
    return Live()


@get("/ready")
async def ready(request: Request[Any, Any, Any]) -> Response[Ready | NotReady]:
    """200 when the database answers, migrations are applied, NATS is connected and no
    sealed event is stuck unpublished."""
    # Only a process that publishes (roles all and worker) needs NATS to be useful; an API
    # replica keeps accepting writes while NATS is away, so NATS must not fail its readiness.
    app_state: AppState | None = request.app.state.get("app_state")
    needs_nats = app_state is None or app_state.settings.role != "api"
    checks, reasons = await check(
        app_state.pool if app_state else None,
        app_state.nats if app_state else None,
        require_nats=needs_nats,
        publisher=f"nats:{app_state.settings.nats_stream}" if app_state else None,
    )
    if checks.ready:
        return Response(Ready(checks=checks))
    detail = "; ".join(reasons) if app_state else "runtime not started"
    return Response(
        NotReady(detail=detail, checks=checks), status_code=503, media_type=PROBLEM_JSON
    )


health_router = Router("/health", route_handlers=[live, ready], tags=["health"])


def api_and_ui_app_kwargs(services: Services) -> dict[str, Any]:
    """The JSON API (the OpenAPI document and its assets included) and the web UI
    (service/ui) on the same services: what ``serve`` answers besides health."""
    served = api_app_kwargs(services)
    ui = ui_app_kwargs(services)
    served["route_handlers"] = [*served["route_handlers"], *ui["route_handlers"]]
    served["template_config"] = ui["template_config"]
    served["state"] = State({**served["state"].dict(), **ui["state"]})
    return served


def create_app(state: AppState | None = None, *, api: bool = True, debug: bool = False) -> Litestar:
    """Build the app; ``api=False`` serves only the health endpoints (the worker role).

    ``state=None`` gives an app whose readiness always fails: for tests of the HTTP layer
    that need no database. Tracing is on when the process's ``OTEL_*`` variables say so
    (service.api.tracing).
    """
    served: dict[str, Any]
    if api and state is not None:
        served = api_and_ui_app_kwargs(state.services)
        served["state"] = State({**served["state"].dict(), "app_state": state})
    else:
        served = {
            **openapi_app_kwargs(),
            "exception_handlers": EXCEPTION_HANDLERS,
            "state": State({"app_state": state}),
        }
    handlers: list[ControllerRouterHandler] = [health_router, *served.pop("route_handlers")]
    app = litestar_app(
        route_handlers=handlers,
        **served,
        plugins=list(tracing_plugins()),
        # The process configures logging once (service.cli.main); Litestar's default would replace it.
        logging_config=None,
        debug=debug,
    )
    if api and state is not None:
        exact_document(app)
    return app


def litestar_app(**kwargs: Any) -> Litestar:
    """``Litestar(**kwargs)`` answering HEAD on its GET routes (service.api.head_requests):
    the one constructor of the served app and of the tests' in-process ones."""
    app = Litestar(**kwargs)
    app.asgi_handler = serve_head_as_get(app.asgi_handler)
    return app
