"""HTTP webhook subscriptions and their delivery log: ``/api/v1/webhooks``.

Managing a subscription needs ``write`` over every model it delivers
(``service.webhooks.subscriptions``); a subscription the caller may not manage answers 404,
as if it did not exist, so a scoped token learns nothing of others' webhooks.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody, Parameter

from events.access import Permission
from events.errors import ConflictError, NotFoundError, ValidationError
from events.streams import webhook_stream
from events.webhooks import PayloadFormat, WebhookState, validate_url
from service.api.common import MAX_POSITION, Receipt, principal_of, receipt, seed_of, services_of
from service.api.problems import PermissionDeniedError
from service.api.schemas import Strict
from service.commands.tokens import Principal
from service.webhooks import ledger
from service.webhooks.addresses import BlockedAddressError, UnresolvableError, resolve
from service.webhooks.secrets import SecretBox
from service.webhooks.subscriptions import (
    all_webhooks,
    create_webhook,
    delete_webhook,
    may_manage,
    webhook,
)

Position = Annotated[int, Parameter(ge=1, le=MAX_POSITION, description="A log position")]


class WebhookRequest(Strict, frozen=True, kw_only=True):
    url: str
    event_types: list[str] = msgspec.field(default_factory=list)
    models: list[str] = msgspec.field(default_factory=list)
    payload_format: PayloadFormat = PayloadFormat.MODELREG
    description: str = ""
    # Standard Webhooks form (whsec_ + base64); left out, one is generated.
    secret: str | None = None


class WebhookInfo(msgspec.Struct, frozen=True, kw_only=True):
    subscription_id: str
    url: str
    event_types: list[str]
    models: list[str]
    payload_format: PayloadFormat
    description: str
    deleted: bool


class CreatedWebhook(WebhookInfo, frozen=True, kw_only=True):
    secret: str | None
    note: str


class DeliveryDetail(msgspec.Struct, frozen=True, kw_only=True):
    delivery: ledger.Delivery
    attempts: list[ledger.Attempt]


class Redelivery(msgspec.Struct, frozen=True, kw_only=True):
    subscription_id: str
    log_position: int
    previous_status: str
    status: str = "redeliver"


def _info(state: WebhookState) -> WebhookInfo:
    return WebhookInfo(
        subscription_id=state.subscription_id,
        url=state.url,
        event_types=list(state.event_types),
        models=list(state.models),
        payload_format=state.payload_format,
        description=state.description,
        deleted=state.deleted,
    )


def _may_write(principal: Principal) -> None:
    if Permission.WRITE not in principal.permissions:
        raise PermissionDeniedError(Permission.WRITE.value)


async def _managed(request: Request[Any, Any, Any], subscription_id: str) -> WebhookState:
    """The subscription, if the caller may manage it; 404 otherwise (existing or not)."""
    principal = principal_of(request)
    _may_write(principal)
    state: WebhookState | None
    try:
        state = await webhook(services_of(request).executor, subscription_id)
    except (NotFoundError, ValidationError):  # none, or not even a valid id
        state = None
    if state is None or not may_manage(principal, state):
        raise NotFoundError(f"no webhook {subscription_id!r}", subscription_id=subscription_id)
    return state


class WebhooksController(Controller):
    path = "/webhooks"
    tags = ["webhooks"]

    @post("/", status_code=201)
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[WebhookRequest]
    ) -> CreatedWebhook:
        """Subscribe a URL to events; the signing secret is in this response only."""
        principal = principal_of(request)
        _may_write(principal)
        wanted = WebhookState(subscription_id="-", models=tuple(data.models))
        if not may_manage(principal, wanted):
            scope = "the whole registry" if not data.models else f"models {data.models}"
            raise PermissionDeniedError(Permission.WRITE.value, scope=scope)
        services = services_of(request)
        await _refuse_private(data.url, services.settings.webhooks_allow_private)
        seed = seed_of(request)
        subscription_id = services.registry.request_id_for(seed)
        secret: str | None = None
        stream = webhook_stream(subscription_id)
        if seed is not None and await services.store.stream_version(stream) > 0:
            state = await webhook(services.executor, subscription_id)  # a retried request
        else:
            outcome, secret = await create_webhook(
                services.executor,
                SecretBox(services.pepper),
                actor=principal.name,
                url=data.url,
                event_types=data.event_types,
                models=data.models,
                payload_format=data.payload_format,
                description=data.description,
                secret=data.secret,
                subscription_id=subscription_id,
                id_seed=seed,
            )
            state = outcome.state
            secret = None if outcome.replayed else secret
        info = _info(state)
        return CreatedWebhook(
            **msgspec.structs.asdict(info),
            secret=secret,
            note="the secret is shown once; store it where the receiver verifies signatures"
            if secret
            else "a retry: the secret was shown in the first response only",
        )

    @get("/")
    async def list_webhooks(self, request: Request[Any, Any, Any]) -> list[WebhookInfo]:
        """The live subscriptions the caller may manage."""
        principal = principal_of(request)
        _may_write(principal)
        found = await all_webhooks(services_of(request).executor)
        return [_info(s) for s in found if s.active and may_manage(principal, s)]

    @get("/{subscription_id:str}")
    async def show(
        self, request: Request[Any, Any, Any], subscription_id: FromPath[str]
    ) -> WebhookInfo:
        return _info(await _managed(request, subscription_id))

    @delete("/{subscription_id:str}", status_code=200)
    async def remove(
        self,
        request: Request[Any, Any, Any],
        subscription_id: FromPath[str],
        reason: FromQuery[str] = "",
    ) -> Response[Receipt]:
        """Stop delivering to the subscription and erase its secret."""
        await _managed(request, subscription_id)
        services = services_of(request)
        outcome = await delete_webhook(
            services.executor, subscription_id, actor=principal_of(request).name, reason=reason
        )
        return receipt(await services.registry.written_from("", outcome))

    @get("/{subscription_id:str}/deliveries")
    async def deliveries(
        self,
        request: Request[Any, Any, Any],
        subscription_id: FromPath[str],
        status: Annotated[
            str | None, Parameter(description="pending, delivered, dead or redeliver")
        ] = None,
        before: Annotated[int | None, Parameter(ge=1, le=MAX_POSITION)] = None,
        limit: Annotated[int, Parameter(ge=1, le=500)] = 50,
    ) -> list[ledger.Delivery]:
        """The delivery log, newest first: status, response code, latency, attempts."""
        await _managed(request, subscription_id)
        if status is not None and status not in ("pending", "delivered", "dead", "redeliver"):
            raise ValidationError(
                "status", "enum", "status is one of pending, delivered, dead, redeliver"
            )
        return await ledger.deliveries(
            services_of(request).pool, subscription_id, status=status, before=before, limit=limit
        )

    @get("/{subscription_id:str}/deliveries/{position:int}")
    async def delivery(
        self, request: Request[Any, Any, Any], subscription_id: FromPath[str], position: Position
    ) -> DeliveryDetail:
        """One delivery with every attempt made."""
        await _managed(request, subscription_id)
        pool = services_of(request).pool
        found = await ledger.deliveries(
            pool, subscription_id, status=None, before=position + 1, limit=1
        )
        if not found or found[0].log_position != position:
            raise NotFoundError(f"no delivery at log position {position}", log_position=position)
        return DeliveryDetail(
            delivery=found[0], attempts=await ledger.attempts_of(pool, subscription_id, position)
        )

    @post("/{subscription_id:str}/deliveries/{position:int}/redeliver", status_code=202)
    async def redeliver(
        self, request: Request[Any, Any, Any], subscription_id: FromPath[str], position: Position
    ) -> Redelivery:
        """Send a delivered or dead-lettered event again (same ``webhook-id``)."""
        state = await _managed(request, subscription_id)
        if state.deleted:
            raise ConflictError(f"webhook {subscription_id} is deleted")
        before = await ledger.request_redelivery(
            services_of(request).pool, subscription_id, position
        )
        if before is None:
            raise NotFoundError(f"no delivery at log position {position}", log_position=position)
        if before not in ("delivered", "dead"):
            raise ConflictError(
                f"the delivery at {position} is {before}: only a delivered or dead one is sent again",
                status=before,
            )
        return Redelivery(
            subscription_id=subscription_id, log_position=position, previous_status=before
        )


async def _refuse_private(url: str, allow_private: bool) -> None:
    """422 for a receiver inside the registry's network (SSRF); a host that does not
    resolve yet is accepted (deliveries retry until it does)."""
    validate_url(url)  # a clear 422 before any lookup
    try:
        await resolve(url, allow_private=allow_private)
    except BlockedAddressError as exc:
        raise ValidationError("url", "private_address", str(exc)) from None
    except UnresolvableError:
        return
