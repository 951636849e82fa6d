"""HTTP webhook subscriptions: the ``webhook:{subscription_id}`` stream. Pure.

A subscription names a receiver URL, which events it wants (event types, exact or a
``prefix.*``; none: all) about which models (names, exact or a ``prefix*``; none: all), and
the payload shape (``modelreg``, or ``mlflow`` for receivers written for MLflow webhooks).
Only events of a model's streams are delivered (``model.*``, ``metrics.*``,
``artifact.*``): registry-wide events (tokens, policies, webhooks) never leave by webhook.

No event carries the signing secret: the shell keeps it encrypted in a table of its own
(``service.webhooks.secrets``) and shows it once, at creation. The URL *is* recorded (it is
how an auditor sees where events go), so it may not carry credentials (``user:pass@``).
"""

from __future__ import annotations

import enum
import re
from typing import ClassVar, assert_never
from urllib.parse import urlsplit

import msgspec

from events.artifacts import ARTIFACT_EVENT_TYPES
from events.base import Command, Decider, Event
from events.errors import ConflictError, NotFoundError, ValidationError
from events.metrics import METRICS_EVENT_TYPES
from events.model.events import MODEL_EVENT_TYPES
from events.names import validate_id
from events.streams import WEBHOOK_TYPE

STREAM_TYPE = WEBHOOK_TYPE
MAX_URL_LENGTH = 2048
MAX_FILTERS = 50
MAX_DESCRIPTION = 500

# What a subscription may ask for: the events of a model's own streams.
DELIVERABLE_TYPES: frozenset[str] = frozenset(
    t.event_type for t in (*MODEL_EVENT_TYPES, *METRICS_EVENT_TYPES, *ARTIFACT_EVENT_TYPES)
)
_TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*|\.\*)?|\*")
_MODEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,255}\*?|\*")


class PayloadFormat(enum.StrEnum):
    MODELREG = "modelreg"
    MLFLOW = "mlflow"


class WebhookCreated(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "webhook.created"
    subscription_id: str
    url: str
    event_types: tuple[str, ...]
    models: tuple[str, ...]
    payload_format: PayloadFormat
    description: str


class WebhookDeleted(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "webhook.deleted"
    subscription_id: str
    reason: str


WebhookEvent = WebhookCreated | WebhookDeleted
WEBHOOK_EVENT_TYPES: tuple[type[Event], ...] = (WebhookCreated, WebhookDeleted)


class CreateWebhook(Command, frozen=True, kw_only=True):
    subscription_id: str
    url: str
    event_types: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    payload_format: PayloadFormat = PayloadFormat.MODELREG
    description: str = ""


class DeleteWebhook(Command, frozen=True, kw_only=True):
    reason: str = ""


WebhookCommand = CreateWebhook | DeleteWebhook


class WebhookState(msgspec.Struct, frozen=True, kw_only=True):
    subscription_id: str = ""
    url: str = ""
    event_types: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    payload_format: PayloadFormat = PayloadFormat.MODELREG
    description: str = ""
    deleted: bool = False

    @property
    def created(self) -> bool:
        return bool(self.subscription_id)

    @property
    def active(self) -> bool:
        return self.created and not self.deleted

    def wants(self, event_type: str, model_name: str | None) -> bool:
        """Whether an event of ``event_type`` about the model named ``model_name`` (None: not
        a model's event) goes to this subscription."""
        if model_name is None or event_type not in DELIVERABLE_TYPES:
            return False
        return type_matches(self.event_types, event_type) and name_matches(self.models, model_name)


def type_matches(patterns: tuple[str, ...], event_type: str) -> bool:
    if not patterns or "*" in patterns:
        return True
    return any(
        event_type.startswith(p[:-1]) if p.endswith(".*") else event_type == p for p in patterns
    )


def name_matches(patterns: tuple[str, ...], name: str) -> bool:
    if not patterns or "*" in patterns:
        return True
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


def initial_state() -> WebhookState:
    return WebhookState()


def evolve(state: WebhookState, event: WebhookEvent) -> WebhookState:
    match event:
        case WebhookCreated():
            return WebhookState(
                subscription_id=event.subscription_id,
                url=event.url,
                event_types=event.event_types,
                models=event.models,
                payload_format=event.payload_format,
                description=event.description,
            )
        case WebhookDeleted():
            return msgspec.structs.replace(state, deleted=True)
        case _:
            assert_never(event)


def decide(command: WebhookCommand, state: WebhookState) -> list[WebhookEvent]:
    match command:
        case CreateWebhook():
            return _create(command, state)
        case DeleteWebhook():
            if not state.created:
                raise NotFoundError("no such webhook")
            if state.deleted:
                return []
            return [WebhookDeleted(subscription_id=state.subscription_id, reason=command.reason)]
        case _:
            assert_never(command)


def _create(command: CreateWebhook, state: WebhookState) -> list[WebhookEvent]:
    if state.created:
        raise ConflictError(
            f"webhook {command.subscription_id} exists already",
            subscription_id=command.subscription_id,
        )
    validate_id(command.subscription_id, "subscription_id")
    validate_url(command.url)
    _validate_types(command.event_types)
    _validate_models(command.models)
    if len(command.description) > MAX_DESCRIPTION:
        raise ValidationError(
            "description", "too_long", f"at most {MAX_DESCRIPTION} characters", max=MAX_DESCRIPTION
        )
    return [
        WebhookCreated(
            subscription_id=command.subscription_id,
            url=command.url,
            event_types=tuple(dict.fromkeys(command.event_types)),
            models=tuple(dict.fromkeys(command.models)),
            payload_format=command.payload_format,
            description=command.description,
        )
    ]


def validate_url(url: str) -> None:
    """An absolute http(s) URL with a host, no credentials and no fragment."""
    if len(url) > MAX_URL_LENGTH:
        raise ValidationError("url", "too_long", f"at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise ValidationError("url", "invalid", "not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValidationError("url", "scheme", "a webhook URL starts with https:// or http://")
    if not parts.hostname:
        raise ValidationError("url", "host", "a webhook URL names a host")
    if parts.username is not None or parts.password is not None:
        raise ValidationError(
            "url",
            "credentials",
            "the URL is recorded in the audit log: no user:password@ in it (the signature"
            " authenticates the registry to the receiver)",
        )
    if parts.fragment:
        raise ValidationError("url", "fragment", "a webhook URL has no #fragment")
    if port == 0:
        raise ValidationError("url", "port", "port 0 names no receiver")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise ValidationError("url", "invalid", "a URL holds no spaces or control characters")


def _validate_types(patterns: tuple[str, ...]) -> None:
    if len(patterns) > MAX_FILTERS:
        raise ValidationError("event_types", "too_many", f"at most {MAX_FILTERS}", max=MAX_FILTERS)
    for i, pattern in enumerate(patterns):
        if not _TYPE_PATTERN.fullmatch(pattern):
            raise ValidationError(
                f"event_types[{i}]",
                "pattern",
                "an event type (model.stage_transitioned), a prefix (model.*) or *",
            )
        if not any(type_matches((pattern,), t) for t in DELIVERABLE_TYPES):
            raise ValidationError(
                f"event_types[{i}]",
                "unknown",
                f"{pattern!r} matches no event a webhook delivers (events of models: model.*,"
                " metrics.*, artifact.*)",
            )


def _validate_models(patterns: tuple[str, ...]) -> None:
    if len(patterns) > MAX_FILTERS:
        raise ValidationError("models", "too_many", f"at most {MAX_FILTERS}", max=MAX_FILTERS)
    for i, pattern in enumerate(patterns):
        if not _MODEL_PATTERN.fullmatch(pattern):
            raise ValidationError(
                f"models[{i}]", "pattern", "a model name, a name prefix ending in *, or *"
            )


WEBHOOKS: Decider[WebhookState, WebhookCommand, WebhookEvent] = Decider(
    stream_type=STREAM_TYPE,
    initial_state=initial_state,
    evolve=evolve,
    decide=decide,
    state_type=WebhookState,
)
