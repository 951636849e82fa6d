"""The ``/api/v1`` router: every controller behind authentication, idempotency and metrics."""

from __future__ import annotations

from typing import Any

from litestar import Router
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware

from service.api.auth import BearerTokenMiddleware
from service.api.common import refuse_nul_characters
from service.api.idempotency import idempotency_middleware
from service.api.problems import EXCEPTION_HANDLERS
from service.api.routes_governance import (
    LifecycleController,
    PromotionsController,
    RegistryPolicyController,
)
from service.api.routes_models import ModelsController
from service.api.routes_operations import (
    AuditController,
    DeploymentsController,
    MetricsController,
    TokensController,
)
from service.api.routes_versions import CompareController, VersionsController
from service.api.services import Services
from service.api.telemetry import metrics_middleware

# A version with a 10,000-file manifest is about 2 MiB; leave room, refuse the absurd (413).
MAX_BODY_BYTES = 8 * 1024 * 1024

CONTROLLERS = [
    ModelsController,
    VersionsController,
    CompareController,
    LifecycleController,
    PromotionsController,
    RegistryPolicyController,
    DeploymentsController,
    AuditController,
    TokensController,
]


def api_routers() -> list[Router]:
    """``/api/v1`` and ``/metrics``; both authenticated."""
    # Outermost first: every request is counted, then authenticated, then deduplicated.
    return [
        Router(
            "/api/v1",
            route_handlers=CONTROLLERS,
            middleware=[
                metrics_middleware,
                DefineMiddleware(BearerTokenMiddleware),
                idempotency_middleware,
            ],
            before_request=refuse_nul_characters,
        ),
        Router(
            "/",
            route_handlers=[MetricsController],
            middleware=[DefineMiddleware(BearerTokenMiddleware)],
        ),
    ]


def api_app_kwargs(services: Services) -> dict[str, Any]:
    """What a Litestar app needs to serve the API: routers, error mapping, shared state."""
    return {
        "route_handlers": api_routers(),
        "exception_handlers": EXCEPTION_HANDLERS,
        "state": State({"services": services, "metrics": services.metrics}),
        "request_max_body_size": MAX_BODY_BYTES,
    }
