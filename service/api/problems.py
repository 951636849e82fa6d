"""RFC 9457 problem+json for every error, from one mapping of the error tree. I/O: none.

    DomainError subclasses        -> 404 / 409 / 412 / 422, with ``code`` and details
    request decoding (Litestar)   -> 400, with one entry per field: field, rule, message
    authentication / permission   -> 401 (WWW-Authenticate) / 403 naming the permission
    the database unreachable      -> 503 with Retry-After (the client retries, same key)
    a disk full (files, Postgres) -> 507, nothing of the request kept; no Retry-After
    anything unexpected           -> 500, logged once with the request id, no internals

Clients match on ``type`` (``urn:modelreg:<code>``) and the structured members, never on
the human ``detail``.
"""

from __future__ import annotations

import errno
import logging
import math
import re
import uuid
from typing import Any

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.types import ExceptionHandlersMap

from eventlog.freshness import NotYetVisibleError
from events.errors import (
    AlreadyExistsError,
    ConflictError,
    DomainError,
    InvalidTransitionError,
    NotFoundError,
    PolicyViolationError,
    ValidationError,
)
from service.commands.executor import PreconditionFailedError
from service.identity.jwks import IdentityProviderUnavailableError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class FieldProblem(msgspec.Struct, frozen=True, omit_defaults=True):
    field: str
    rule: str
    message: str


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str = ""
    instance: str = ""
    code: str = ""
    field: str | None = None
    rule: str | None = None
    errors: list[FieldProblem] = msgspec.field(default_factory=list)
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class AuthenticationError(Exception):
    """No usable bearer token (missing, unknown, revoked or expired)."""


class PermissionDeniedError(Exception):
    def __init__(self, permission: str, scope: str | None = None) -> None:
        where = f" on {scope}" if scope else ""
        super().__init__(f"this token lacks the '{permission}' permission{where}")
        self.permission = permission
        self.scope = scope


class TooManyRequestsError(Exception):
    """A caller went over its budget of expensive reads (service.api.rate_limit)."""

    def __init__(self, field: str, retry_after: float) -> None:
        super().__init__(
            f"too many {field} reads for this token; retry in {math.ceil(retry_after)} s"
        )
        self.field = field
        self.retry_after = max(1, math.ceil(retry_after))


class BadRequestError(Exception):
    """A request parameter is malformed (a cursor, an as_of value, a filter): 400, or the
    4xx ``status`` given (415 for a body that is not JSON)."""

    def __init__(
        self, field: str, rule: str, message: str, *, status: int = 400, code: str = "bad_request"
    ) -> None:
        super().__init__(message)
        self.field = field
        self.rule = rule
        self.status = status
        self.code = code


_STATUS: list[tuple[type[DomainError], int, str]] = [
    (NotFoundError, 404, "Not found"),
    (AlreadyExistsError, 409, "Already exists"),
    (PreconditionFailedError, 412, "Precondition failed"),
    (ValidationError, 422, "Invalid value"),
    (PolicyViolationError, 409, "Refused by governance policy"),
    (InvalidTransitionError, 409, "Transition not allowed"),
    (ConflictError, 409, "Conflict"),
]


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> Response[Problem]:
    return Response(problem, status_code=problem.status, media_type=PROBLEM_JSON, headers=headers)


# The refusals an auditor asks about (service.denials): not authenticated, not permitted,
# refused by the governance policy.
DENIALS = frozenset({"unauthenticated", "permission_denied", "policy_violation"})


def _record_denial(
    request: Request[Any, Any, Any], code: str, status: int, reason: str, permission: str
) -> None:
    services = getattr(request.app.state, "services", None)
    if services is None:  # an app without a runtime (HTTP-layer tests)
        return
    user = request.scope.get("user")
    principal, token_id = getattr(user, "name", ""), getattr(user, "token_id", "")
    client = request.client
    services.denials.recorder.record(
        services.registry.now(),
        principal=principal,
        token_id=token_id,
        status=status,
        code=code,
        method=request.method,
        route=request.scope.get("path_template", ""),
        model=str(request.scope.get("path_params", {}).get("name", "")),
        permission=str(permission),
        reason=reason,
        client=client.host if client is not None else "",
    )


def problem_at(
    request: Request[Any, Any, Any],
    code: str,
    title: str,
    status: int,
    detail: str,
    *,
    field: str | None = None,
    rule: str | None = None,
    errors: list[FieldProblem] | None = None,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Problem]:
    """The problem+json answer to ``request``: its type is ``urn:modelreg:<code>``."""
    if code in DENIALS:
        reason = f"{rule}: {detail}" if rule and code == "policy_violation" else detail
        _record_denial(request, code, status, reason, (details or {}).get("permission", ""))
    return problem_response(
        Problem(
            type=f"urn:modelreg:{code}",
            title=title,
            status=status,
            detail=detail,
            instance=request.url.path,
            code=code,
            field=field,
            rule=rule,
            errors=errors or [],
            details=details or {},
        ),
        headers=headers,
    )


def _domain(request: Request[Any, Any, Any], exc: DomainError) -> Response[Problem]:
    found = next(((status, title) for cls, status, title in _STATUS if isinstance(exc, cls)), None)
    if found is None:
        return _unexpected(request, exc)
    status, title = found
    details = {k: v for k, v in exc.details.items() if k not in {"field", "rule"}}
    return problem_at(
        request,
        exc.code,
        title,
        status,
        exc.message,
        field=getattr(exc, "field", None),
        rule=getattr(exc, "rule", None),
        details=msgspec.to_builtins(details, str_keys=True),
    )


_MISSING = re.compile(r"missing required field `([^`]+)`")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")
# How a request struct's own check (``__post_init__``) names the field it refuses.
_OUT_OF_RANGE = re.compile(r"^`([^`]+)` is out of range")


def _rule_of(message: str) -> str:
    lowered = message.lower()
    if "missing required field" in lowered:
        return "required"
    if "unknown field" in lowered:
        return "unknown_field"
    if "matching regex" in lowered:
        return "pattern"
    if "length" in lowered:
        return "length"
    if "out of range" in lowered:
        return "range"
    if ">=" in message or "<=" in message or " > " in message or " < " in message:
        return "range"
    if "invalid enum value" in lowered:
        return "enum"
    if lowered.startswith("invalid"):  # e.g. "Invalid RFC3339 encoded datetime"
        return "format"
    if lowered.startswith("expected"):
        return "type"
    return "invalid"


def _field_of(key: str, message: str) -> str:
    for pattern in (_MISSING, _UNKNOWN, _OUT_OF_RANGE):
        match = pattern.search(message)
        if match:
            parent = "" if key in {"data", ""} else key.removeprefix("data.") + "."
            return parent + match.group(1)
    field = key.removeprefix("$.").removeprefix("data.")
    return "body" if field in {"", "data"} else field


def _wire_name(request: Request[Any, Any, Any], key: str) -> str:
    """The name a client sends a parameter under (``state``), not the handler's (``which``)."""
    handler = request.scope.get("route_handler")
    parameter = getattr(getattr(handler, "parsed_fn_signature", None), "parameters", {}).get(key)
    return getattr(getattr(parameter, "kwarg_definition", None), "name", None) or key


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Problem]:
    errors: list[FieldProblem] = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            message = str(item.get("message", ""))
            key = _wire_name(request, str(item.get("key", "")))
            if key == "data" and message == "'data'":  # Litestar's word for "no body at all"
                errors.append(
                    FieldProblem(
                        field="body", rule="required", message="this request needs a JSON body"
                    )
                )
                continue
            errors.append(
                FieldProblem(field=_field_of(key, message), rule=_rule_of(message), message=message)
            )
    first = errors[0] if errors else None
    return problem_at(
        request,
        "bad_request",
        "Malformed request",
        400,
        first.message if first else str(exc.detail),
        field=first.field if first else None,
        rule=first.rule if first else None,
        errors=errors,
    )


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    if exc.status_code >= 500:
        return _unexpected(request, exc)
    field, rule = None, None
    if isinstance(exc.__cause__, SerializationException):
        field, rule = "body", "json"  # the body is not JSON (or has a number out of range)
    elif exc.status_code == 413:
        field, rule = "body", "length"
    return problem_at(
        request,
        f"http_{exc.status_code}",
        _TITLES.get(exc.status_code, "Request refused"),
        exc.status_code,
        str(exc.detail),
        field=field,
        rule=rule,
        headers=exc.headers,
    )


_TITLES = {
    400: "Malformed request",
    404: "Not found",
    405: "Method not allowed",
    413: "Request too large",
    415: "Unsupported media type",
}


def _authentication(request: Request[Any, Any, Any], exc: AuthenticationError) -> Response[Problem]:
    return problem_at(
        request,
        "unauthenticated",
        "Authentication required",
        401,
        str(exc),
        headers={"WWW-Authenticate": 'Bearer realm="modelreg"'},
    )


def _permission(request: Request[Any, Any, Any], exc: PermissionDeniedError) -> Response[Problem]:
    log.warning("denied: %s %s: %s", request.method, request.url.path, exc)
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.denied(exc.permission)
    return problem_at(
        request,
        "permission_denied",
        "Permission denied",
        403,
        str(exc),
        details={"permission": exc.permission, **({"scope": exc.scope} if exc.scope else {})},
    )


def _bad_request(request: Request[Any, Any, Any], exc: BadRequestError) -> Response[Problem]:
    return problem_at(
        request,
        exc.code,
        _TITLES.get(exc.status, "Malformed request"),
        exc.status,
        str(exc),
        field=exc.field,
        rule=exc.rule,
    )


def _not_visible(request: Request[Any, Any, Any], exc: NotYetVisibleError) -> Response[Problem]:
    return problem_at(
        request,
        "not_yet_visible",
        "Views have not caught up",
        503,
        str(exc),
        details={"min_position": exc.position, "reached": exc.reached},
        headers={"Retry-After": "1"},
    )


def _too_many(request: Request[Any, Any, Any], exc: TooManyRequestsError) -> Response[Problem]:
    return problem_at(
        request,
        "rate_limited",
        "Too many requests",
        429,
        str(exc),
        field=exc.field,
        rule="rate_limit",
        headers={"Retry-After": str(exc.retry_after)},
    )


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    incident = uuid.uuid4().hex[:12]
    log.error(
        "unexpected error %s on %s %s", incident, request.method, request.url.path, exc_info=exc
    )
    return problem_at(
        request,
        "internal_error",
        "Internal error",
        500,
        f"an unexpected error occurred; incident {incident} is in the server log",
    )


# --------------------------------------------------------------- the database is away

# Seconds a client should wait before retrying when Postgres is unreachable: long enough
# for a restart or a failover to make progress, short enough to recover quickly.
OUTAGE_RETRY_AFTER = 1

_OUTAGE_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
        errno.EADDRNOTAVAIL,
        errno.EPIPE,
    }
)


# A full disk, or a user's quota spent: retrying soon fails again, until someone frees
# space, so it is no outage (503) and no bug (500): 507 Insufficient Storage (RFC 4918).
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the data dir's disk, or Postgres', has no room left."""
    if isinstance(exc, asyncpg.exceptions.DiskFullError):  # 53100
        return True
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def _storage_full(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    # An operator must act, so it is logged as an error; the client is told nothing was kept
    # (the stores clean up a failed write before its error reaches this handler).
    log.error("storage full on %s %s: %s", request.method, request.url.path, exc)
    return problem_at(
        request,
        "insufficient_storage",
        "Insufficient storage",
        507,
        "the registry's storage is full, so nothing of this request was kept; send it again"
        " once an operator has freed space",
    )


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database (or the network to it) is away for now, rather
    than that a request or the code is wrong: worth the same request again later."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True  # refused, reset, aborted; a pool acquire or a statement timed out
    if isinstance(
        exc,
        asyncpg.PostgresConnectionError  # 08xxx, e.g. ConnectionDoesNotExist
        | asyncpg.exceptions.OperatorInterventionError  # 57xxx: 57P01 AdminShutdown, 57P03 ...
        | asyncpg.exceptions.InsufficientResourcesError  # 53xxx: 53300 too_many_connections
        | asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby answered, mid-failover
    ):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        return "connection is closed" in str(exc) or "connection was closed" in str(exc)
    if isinstance(exc, OSError):
        # Connecting to several addresses at once fails with a plain OSError that lists them.
        return exc.errno in _OUTAGE_ERRNOS or str(exc).startswith(
            ("Multiple exceptions", "Connect call failed")
        )
    return False


def _unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """503 + Retry-After for an outage, so clients retry (with the same Idempotency-Key:
    a write that was recorded before the outage cut its answer is then answered, not
    repeated); a full disk is 507; anything else of these classes is unexpected (500)."""
    if is_storage_full(exc):
        return _storage_full(request, exc)
    if isinstance(exc, asyncpg.UndefinedColumnError):
        # The views still have the shape of older code while the projection worker
        # rebuilds them for this code (a view version bump that adds a column).
        log.warning("views of older code on %s %s: %s", request.method, request.url.path, exc)
        return problem_at(
            request,
            "unavailable",
            "Service unavailable",
            503,
            "the registry's views are being rebuilt for this version of the code; retry the"
            " same request shortly",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, asyncpg.UndefinedTableError):
        # The views a read wants are not created yet: an API process that started before the
        # projection worker ever ran (role "api"), or the first moments of a fresh registry.
        log.warning("views not created yet on %s %s: %s", request.method, request.url.path, exc)
        return problem_at(
            request,
            "unavailable",
            "Service unavailable",
            503,
            "the registry's views are not created yet (the projection worker creates them"
            " when it starts); retry the same request shortly",
            headers={"Retry-After": "1"},
        )
    if not is_outage(exc):
        return _unexpected(request, exc)
    log.warning(
        "database unavailable on %s %s: %s: %s",
        request.method,
        request.url.path,
        type(exc).__name__,
        exc,
    )
    return problem_at(
        request,
        "unavailable",
        "Service unavailable",
        503,
        "the database cannot be reached right now; retry the same request later",
        headers={"Retry-After": str(OUTAGE_RETRY_AFTER)},
    )


def _provider_unavailable(
    request: Request[Any, Any, Any], exc: IdentityProviderUnavailableError
) -> Response[Problem]:
    return problem_at(
        request,
        "unavailable",
        "Service unavailable",
        503,
        str(exc),
        headers={"Retry-After": str(OUTAGE_RETRY_AFTER)},
    )


def outage_handlers() -> ExceptionHandlersMap:
    """The exception classes an outage of Postgres surfaces as (looked up by class
    hierarchy, so their subclasses land here too); ``_unavailable`` sorts them."""
    return {
        OSError: _unavailable,  # ConnectionError and TimeoutError are OSErrors
        asyncpg.PostgresError: _unavailable,
        asyncpg.InterfaceError: _unavailable,
    }


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    **outage_handlers(),
    DomainError: _domain,
    ValidationException: _validation,
    HTTPException: _http,
    AuthenticationError: _authentication,
    PermissionDeniedError: _permission,
    BadRequestError: _bad_request,
    NotYetVisibleError: _not_visible,
    TooManyRequestsError: _too_many,
    IdentityProviderUnavailableError: _provider_unavailable,
    Exception: _unexpected,
}
