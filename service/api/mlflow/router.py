"""The ``/api/2.0/mlflow`` router: MLflow's model registry RPCs behind the same metrics,
correlation, authentication (Bearer or Basic) and Idempotency-Key handling as ``/api/v1``,
answering errors in MLflow's envelope."""

from __future__ import annotations

from litestar import Router
from litestar.types import BeforeRequestHookHandler

from service.api.edge import edge
from service.api.idempotency import idempotency_middleware
from service.api.mlflow.auth import secret_of
from service.api.mlflow.errors import MLFLOW_EXCEPTION_HANDLERS
from service.api.mlflow.routes_models import RegisteredModelsController
from service.api.mlflow.routes_versions import ModelVersionsController

PREFIX = "/api/2.0/mlflow"


def mlflow_router(screen: BeforeRequestHookHandler) -> Router:
    """``screen`` is the /api/v1 router's (service.api.router)."""
    return Router(
        PREFIX,
        route_handlers=[RegisteredModelsController, ModelVersionsController],
        middleware=[edge(secret_of), idempotency_middleware],
        before_request=screen,
        exception_handlers=MLFLOW_EXCEPTION_HANDLERS,
        # MLflow's API is MLflow's to document; modelreg's OpenAPI describes /api/v1.
        include_in_schema=False,
        tags=["mlflow"],
    )
