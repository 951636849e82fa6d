"""Typed errors of the client, each carrying the server's RFC 9457 problem document.

    ModelregError                 every failure the client reports
    ├── Unauthenticated           401: no token, or an unknown, revoked or expired one
    ├── PermissionDenied          403: the token lacks a permission (``details["permission"]``)
    ├── NotFound                  404
    ├── Conflict                  409: already exists, transition or governance refusal
    ├── PreconditionFailed        412: ``If-Match`` named an older stream version
    ├── ValidationFailed          400, 413, 422: a malformed or invalid request
    ├── RateLimited               429 after every retry
    ├── ServerError               5xx after every retry
    └── Unreachable               no HTTP answer at all after every retry (connection, timeout)

Match on the class, ``code`` (the ``urn:modelreg:<code>`` suffix), ``field`` and ``rule``;
``detail`` is for people.
"""

from __future__ import annotations

from typing import Any


class ConfigurationError(ValueError):
    """The client cannot be built: no token, or a malformed URL."""


class ModelregError(Exception):
    """The registry refused a request, or could not be reached.

    ``status`` is the HTTP status (``None`` when there was no answer); ``problem`` the
    whole problem+json document as received (empty when the answer was not one).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "",
        title: str = "",
        detail: str = "",
        field: str | None = None,
        rule: str | None = None,
        problem: dict[str, Any] | None = None,
        method: str = "",
        url: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.field = field
        self.rule = rule
        self.problem: dict[str, Any] = problem or {}
        self.method = method
        self.url = url

    @property
    def details(self) -> dict[str, Any]:
        """Structured facts of the refusal (``permission``, ``name``, ``head`` ...)."""
        found = self.problem.get("details")
        return found if isinstance(found, dict) else {}

    @property
    def errors(self) -> list[dict[str, Any]]:
        """One entry per malformed field of a 400 (``field``, ``rule``, ``message``)."""
        found = self.problem.get("errors")
        return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []

    @property
    def refused(self) -> bool:
        """True when the server answered and said no (4xx): retrying the same request will not help."""
        return self.status is not None and 400 <= self.status < 500 and self.status != 429


class Unauthenticated(ModelregError):  # noqa: N818 - reads as the HTTP condition it is
    pass


class PermissionDenied(ModelregError):  # noqa: N818
    pass


class NotFound(ModelregError):  # noqa: N818
    pass


class Conflict(ModelregError):  # noqa: N818
    pass


class PreconditionFailed(ModelregError):  # noqa: N818
    pass


class ValidationFailed(ModelregError):  # noqa: N818
    pass


class RateLimited(ModelregError):  # noqa: N818
    pass


class ServerError(ModelregError):
    pass


class UnsafePath(ModelregError):  # noqa: N818
    """A download refused: a manifest path would be written outside the destination."""


class CorruptDownload(ModelregError):  # noqa: N818
    """The bytes downloaded do not hash to the manifest's digest; nothing was kept."""


class Unreachable(ModelregError):  # noqa: N818
    """No HTTP answer: connection refused or reset, DNS, timeouts (after every retry)."""


_BY_STATUS: dict[int, type[ModelregError]] = {
    400: ValidationFailed,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    413: ValidationFailed,
    422: ValidationFailed,
    429: RateLimited,
}


def error_class(status: int) -> type[ModelregError]:
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, ModelregError)


def from_problem(
    status: int, problem: dict[str, Any], *, method: str = "", url: str = "", text: str = ""
) -> ModelregError:
    """The typed error for an HTTP error answer (``problem`` empty when it was not problem+json)."""

    def text_of(key: str) -> str:
        value = problem.get(key)
        return value if isinstance(value, str) else ""

    def optional(key: str) -> str | None:
        value = problem.get(key)
        return value if isinstance(value, str) else None

    title = text_of("title")
    detail = text_of("detail") or text.strip()[:500]
    code = text_of("code")
    summary = ": ".join(part for part in (title or f"HTTP {status}", detail) if part)
    return error_class(status)(
        f"{status} {summary}",
        status=status,
        code=code,
        title=title,
        detail=detail,
        field=optional("field"),
        rule=optional("rule"),
        problem=problem,
        method=method,
        url=url,
    )
