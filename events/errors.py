"""The one domain error tree. Pure. The HTTP layer maps it to problem+json in one place.

    DomainError
    ├── NotFoundError            something named does not exist (404)
    ├── AlreadyExistsError       a unique name or id is taken (409)
    ├── ConflictError            the state changed under the caller (409)
    │   └── ConcurrencyError     optimistic concurrency lost on a stream (409)
    ├── InvalidTransitionError   a lifecycle move the rules do not allow (409)
    ├── PolicyViolationError     a governance rule refused it; names the rule (403/409)
    ├── ValidationError          a field breaks a rule; names field and rule (422)
    └── UnknownEventTypeError    stored data this code cannot read (500: an operator problem)

Every class has a stable ``code`` that clients match on, never the message.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    code: ClassVar[str] = "domain_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFoundError(DomainError):
    code = "not_found"


class AlreadyExistsError(DomainError):
    code = "already_exists"


class ConflictError(DomainError):
    code = "conflict"


class ConcurrencyError(ConflictError):
    """Another writer appended to the stream first."""

    code = "concurrency_conflict"

    def __init__(self, stream_id: str, expected_version: int | None, actual_version: int) -> None:
        super().__init__(
            f"stream {stream_id} is at version {actual_version}, not {expected_version}",
            stream_id=stream_id,
            expected_version=expected_version,
            actual_version=actual_version,
        )
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version


class InvalidTransitionError(DomainError):
    code = "invalid_transition"


class PolicyViolationError(DomainError):
    """A governance rule refused the command; ``rule`` names it (e.g. ``separation_of_duties``),
    ``field`` the request field it is about, when one is."""

    code = "policy_violation"

    def __init__(self, rule: str, message: str, field: str | None = None, **details: Any) -> None:
        if field is not None:
            details["field"] = field
        super().__init__(message, rule=rule, **details)
        self.rule = rule
        self.field = field


class ValidationError(DomainError):
    """A field's value breaks a rule; ``field`` is a dotted path, ``rule`` a short name."""

    code = "validation_error"

    def __init__(self, field: str, rule: str, message: str, **details: Any) -> None:
        super().__init__(message, field=field, rule=rule, **details)
        self.field = field
        self.rule = rule


class UnknownEventTypeError(DomainError):
    code = "unknown_event_type"

    def __init__(self, event_type: str) -> None:
        super().__init__(
            f"no event type {event_type!r} is known to this code", event_type=event_type
        )
