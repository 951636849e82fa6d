"""The ``/api/v1`` router: every controller behind metrics, correlation, authentication and
idempotency; ``/metrics`` behind authentication."""

from __future__ import annotations

import re
from typing import Any

from litestar import Litestar, Request, Router
from litestar._openapi.plugin import OpenAPIPlugin  # the one place the rendered document lives
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware

from service.api import routes_access, routes_subjects, routes_uploads, routes_webhooks, schemas
from service.api.auth import BearerTokenMiddleware, bearer_secret
from service.api.common import read_consistency, refuse_nul_characters
from service.api.edge import edge
from service.api.idempotency import idempotency_middleware
from service.api.json_body import refuse_unsafe_json
from service.api.mlflow.errors import answering_mlflow_paths_as_mlflow
from service.api.mlflow.router import mlflow_router
from service.api.mlflow_artifacts import mlflow_artifacts_router
from service.api.openapi import SECURITY, document_problems, openapi_app_kwargs
from service.api.openapi_exact import (
    POSITIONS,
    declared_query_names,
    document_path,
    make_exact,
    strict_structs,
)
from service.api.problems import EXCEPTION_HANDLERS, BadRequestError
from service.api.rate_limit import STATE_KEY, ExpensiveReadLimiter, limit_expensive_reads
from service.api.routes_access import AccessController, ServiceAccountsController
from service.api.routes_archive import ArchiveController
from service.api.routes_artifacts import ArtifactsController
from service.api.routes_auth import AuthConfigController
from service.api.routes_denials import DenialsController
from service.api.routes_gates import GatesController
from service.api.routes_governance import (
    LifecycleController,
    PromotionsController,
    RegistryPolicyController,
)
from service.api.routes_links import LinksController
from service.api.routes_models import ModelsController
from service.api.routes_operations import (
    AuditController,
    DeploymentsController,
    TokensController,
)
from service.api.routes_subjects import SubjectsController
from service.api.routes_uploads import UploadsController
from service.api.routes_versions import CompareController, VersionsController
from service.api.routes_webhooks import WebhooksController
from service.api.services import Services
from service.api.subject_names import subject_names_middleware
from service.api.telemetry import MetricsController

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
    AccessController,
    ServiceAccountsController,
    ArtifactsController,
    ArchiveController,
    UploadsController,
    LinksController,
    WebhooksController,
    GatesController,
    DenialsController,
    AuthConfigController,
    SubjectsController,
]


QUERY_NAMES = "declared_query_names"
# Query parameters that are always a date-time (``as_of``/``at`` also take positions).
TIMES = frozenset({"since", "until"})
_BARE_NUMBER = re.compile(r"[-+]?[0-9._eE+-]*")


def exact_document(app: Litestar) -> None:
    """Write the API's own rules into the app's OpenAPI document (``service.api.
    openapi_exact``), and keep the query parameters each operation declares, which
    ``refuse_unknown_query`` holds requests to."""
    document = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()  # cached: edited in place
    make_exact(
        document,
        strict_structs(schemas, routes_access, routes_uploads, routes_webhooks, routes_subjects),
    )
    app.state[QUERY_NAMES] = declared_query_names(document)


def refuse_unknown_query(request: Request[Any, Any, Any]) -> None:
    """Refuse (400, rule ``unknown``) a query parameter the operation does not declare: a
    misspelt filter would otherwise be ignored silently and answer more than was asked."""
    declared = request.app.state.get(QUERY_NAMES)
    template = request.scope.get("path_template")
    if declared is None or template is None:
        return
    known = declared.get((request.method, document_path(template)))
    if known is None:
        return
    for name, value in request.query_params.items():
        if name not in known:
            raise BadRequestError(name, "unknown", f"unknown query parameter {name!r}")
        if name in POSITIONS and not value:
            # Litestar would read an empty value as "not given"; the document says integer.
            raise BadRequestError(
                name, "type", f"{name} is empty: give a log position or leave it out"
            )
        if name in TIMES and _BARE_NUMBER.fullmatch(value):
            # The decoder would read a bare number as seconds since 1970; the document says
            # an RFC 3339 date-time.
            raise BadRequestError(name, "format", f"{name} is an RFC 3339 date-time")


async def screen_request(request: Request[Any, Any, Any]) -> None:
    """Before any handler (Litestar takes one hook per layer): no undeclared query
    parameter; the consistency its reads asked for; the body is JSON, shallow, without
    duplicate keys; no value holds a NUL; expensive reads within the caller's budget."""
    refuse_unknown_query(request)
    read_consistency(request)
    await refuse_unsafe_json(request)
    await refuse_nul_characters(request)
    await limit_expensive_reads(request)


def api_routers() -> list[Router]:
    """``/api/v1``, MLflow's ``/api/2.0/mlflow`` and artifact proxy, and ``/metrics``; all
    authenticated."""
    # The edge counts every request, gives it its correlation id (said on errors too),
    # authenticates it and answers its errors; then writes are deduplicated.
    document_problems([*CONTROLLERS, MetricsController])
    # The Prometheus text format, as the handler answers; the document said JSON.
    MetricsController.get.media_type = "text/plain"
    return [
        Router(
            "/api/v1",
            route_handlers=CONTROLLERS,
            middleware=[edge(bearer_secret), idempotency_middleware],
            before_request=screen_request,
            security=SECURITY,
        ),
        mlflow_router(screen_request),
        mlflow_artifacts_router(),
        Router(
            "/",
            route_handlers=[MetricsController],
            middleware=[DefineMiddleware(BearerTokenMiddleware)],
            security=SECURITY,
        ),
    ]


def api_app_kwargs(services: Services) -> dict[str, Any]:
    """What a Litestar app needs to serve the API: routers, error mapping, shared state, and
    the OpenAPI document with its viewers."""
    docs = openapi_app_kwargs()
    return {
        **docs,
        "route_handlers": [*api_routers(), *docs["route_handlers"]],
        "exception_handlers": answering_mlflow_paths_as_mlflow(EXCEPTION_HANDLERS),
        "state": State(
            {
                "services": services,
                "metrics": services.metrics,
                STATE_KEY: ExpensiveReadLimiter.from_settings(services.settings),
            }
        ),
        "request_max_body_size": MAX_BODY_BYTES,
        # Outermost: every answer, API, MLflow and UI pages alike, names people by name.
        "middleware": [subject_names_middleware],
    }
