"""MLflow's error envelope, from the same handlers that answer problem+json. I/O: none.

MLflow clients read ``{"error_code": ..., "message": ...}`` and retry any 5xx (and 429)
up to seven times, so the status must say exactly what MLflow's would: a refusal the
caller can fix is never a 5xx. Each exception is first answered by modelreg's own handler
(which logs, counts denials and keeps headers such as Retry-After), then re-shaped:

    not_found                  RESOURCE_DOES_NOT_EXIST   404
    http_404, http_405         ENDPOINT_NOT_FOUND        404 / 405
    already_exists             RESOURCE_ALREADY_EXISTS   400 (MLflow's status, not 409)
    4xx refusals of a value    INVALID_PARAMETER_VALUE   400 (413, 415 keep theirs)
    invalid_transition         INVALID_PARAMETER_VALUE   400
    policy_violation           PERMISSION_DENIED         403 (governance said no)
    permission_denied          PERMISSION_DENIED         403
    unauthenticated            UNAUTHENTICATED           401
    other conflicts, 412       RESOURCE_CONFLICT         409
    rate_limited               REQUEST_LIMIT_EXCEEDED    429
    unavailable, not visible   TEMPORARILY_UNAVAILABLE   503 (retried by the client: safe)
    insufficient_storage       IO_ERROR                  507 (not retried: the disk is full)
    anything else              INTERNAL_ERROR            500

The envelope also carries modelreg's ``field``, ``rule`` and ``details`` where known:
MLflow clients ignore fields they do not know.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from service.api.problems import EXCEPTION_HANDLERS, Problem


class MlflowError(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    error_code: str
    message: str
    field: str | None = None
    rule: str | None = None
    details: dict[str, Any] = msgspec.field(default_factory=dict)


_BY_CODE: dict[str, tuple[str, int | None]] = {
    "not_found": ("RESOURCE_DOES_NOT_EXIST", 404),
    "http_404": ("ENDPOINT_NOT_FOUND", 404),
    "http_405": ("ENDPOINT_NOT_FOUND", 405),
    "already_exists": ("RESOURCE_ALREADY_EXISTS", 400),
    "invalid_transition": ("INVALID_PARAMETER_VALUE", 400),
    "policy_violation": ("PERMISSION_DENIED", 403),
    "permission_denied": ("PERMISSION_DENIED", 403),
    "unauthenticated": ("UNAUTHENTICATED", 401),
    "rate_limited": ("REQUEST_LIMIT_EXCEEDED", 429),
    "unavailable": ("TEMPORARILY_UNAVAILABLE", 503),
    "not_yet_visible": ("TEMPORARILY_UNAVAILABLE", 503),
    "insufficient_storage": ("IO_ERROR", 507),
}


def envelope_of(problem: Problem) -> tuple[MlflowError, int]:
    """The MLflow envelope and HTTP status for a problem modelreg would have answered."""
    code, status = _BY_CODE.get(problem.code, ("", None))
    if not code:
        if problem.status >= 500:
            code, status = "INTERNAL_ERROR", 500
        elif problem.status in (409, 412):
            code, status = "RESOURCE_CONFLICT", 409
        elif problem.status in (413, 415):
            code, status = "INVALID_PARAMETER_VALUE", problem.status
        else:
            code, status = "INVALID_PARAMETER_VALUE", 400
    return (
        MlflowError(
            error_code=code,
            message=problem.detail or problem.title,
            field=problem.field,
            rule=problem.rule,
            details=problem.details,
        ),
        status or problem.status,
    )


def _handler_for(exc: Exception) -> Any:
    return next(
        (EXCEPTION_HANDLERS[c] for c in type(exc).__mro__ if c in EXCEPTION_HANDLERS),
        EXCEPTION_HANDLERS[Exception],
    )


def mlflow_error(request: Request[Any, Any, Any], exc: Exception) -> Response[MlflowError]:
    answered: Response[Any] = _handler_for(exc)(request, exc)
    problem = answered.content
    if not isinstance(problem, Problem):  # every modelreg handler answers a Problem
        problem = Problem(type="urn:modelreg:internal_error", title="Internal error", status=500)
    body, status = envelope_of(problem)
    headers = dict(answered.headers)
    if status == 401:
        # MLflow clients send HTTP Basic as readily as a bearer token.
        headers["WWW-Authenticate"] = 'Bearer realm="modelreg", Basic realm="modelreg"'
    return Response(body, status_code=status, headers=headers, media_type="application/json")


# Litestar picks a handler by the exception's class across every layer, so each class the
# app maps is mapped here too: otherwise the app's more specific one would answer.
MLFLOW_EXCEPTION_HANDLERS: ExceptionHandlersMap = dict.fromkeys(EXCEPTION_HANDLERS, mlflow_error)


MLFLOW_PATHS = "/api/2.0/mlflow"  # the registry RPCs and /api/2.0/mlflow-artifacts alike


def answering_mlflow_paths_as_mlflow(handlers: ExceptionHandlersMap) -> ExceptionHandlersMap:
    """The app's handlers, except that an HTTP error on a path no route matched answers in
    MLflow's envelope when the path is MLflow's: the 404/405 for an unknown RPC is raised
    before any router is chosen, so the MLflow routers' own handlers never see it, and
    MLflow's client reads ``error_code`` (ENDPOINT_NOT_FOUND), not problem+json."""
    app_http = handlers[HTTPException]

    def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        if request.url.path.startswith(MLFLOW_PATHS):
            return mlflow_error(request, exc)
        answered: Response[Any] = app_http(request, exc)
        return answered

    return {**handlers, HTTPException: http_error}
