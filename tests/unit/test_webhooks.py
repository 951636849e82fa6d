"""Webhook subscriptions (the pure decider and filters), who may manage them, the SSRF
address rule, the back-off, and the payload shapes."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

import pytest

from events.access import Permission
from events.errors import ConflictError, NotFoundError, ValidationError
from events.webhooks import (
    WEBHOOKS,
    CreateWebhook,
    DeleteWebhook,
    PayloadFormat,
    WebhookCreated,
    WebhookDeleted,
)
from service.commands.tokens import Principal
from service.webhooks.addresses import is_public
from service.webhooks.payloads import MLFLOW_EVENTS, shape_has
from service.webhooks.runner import DeliveryConfig, backoff
from service.webhooks.subscriptions import may_manage, pattern_within

NOW = datetime(2026, 3, 3, 14, 3, tzinfo=UTC)


def create(**fields: object) -> CreateWebhook:
    values: dict[str, object] = {"subscription_id": "w1", "url": "https://ci.acme.io/hook"}
    return CreateWebhook(actor="alice", now=NOW, **(values | fields))  # type: ignore[arg-type]


def test_a_subscription_is_created_once_and_deleted_once() -> None:
    events = WEBHOOKS.decide(create(models=("churn*", "churn*")), WEBHOOKS.initial_state())
    assert events == [
        WebhookCreated(
            subscription_id="w1",
            url="https://ci.acme.io/hook",
            event_types=(),
            models=("churn*",),
            payload_format=PayloadFormat.MODELREG,
            description="",
        )
    ]
    state = WEBHOOKS.fold(events)
    with pytest.raises(ConflictError):
        WEBHOOKS.decide(create(), state)
    deleted = WEBHOOKS.decide(DeleteWebhook(actor="alice", now=NOW), state)
    assert deleted == [WebhookDeleted(subscription_id="w1", reason="")]
    assert WEBHOOKS.decide(DeleteWebhook(actor="a", now=NOW), WEBHOOKS.fold(deleted, state)) == []
    with pytest.raises(NotFoundError):
        WEBHOOKS.decide(DeleteWebhook(actor="a", now=NOW), WEBHOOKS.initial_state())


@pytest.mark.parametrize(
    ("fields", "field", "rule"),
    [
        ({"url": "ftp://x.io/h"}, "url", "scheme"),
        ({"url": "https:///h"}, "url", "host"),
        ({"url": "https://bob:pw@x.io/h"}, "url", "credentials"),
        ({"url": "https://x.io/h#frag"}, "url", "fragment"),
        ({"url": "https://x.io:99999/h"}, "url", "invalid"),
        ({"url": "https://x.io/" + "a" * 3000}, "url", "too_long"),
        ({"event_types": ("Model.X",)}, "event_types[0]", "pattern"),
        ({"event_types": ("token.issued",)}, "event_types[0]", "unknown"),
        ({"event_types": ("webhook.*",)}, "event_types[0]", "unknown"),
        ({"models": ("bad name",)}, "models[0]", "pattern"),
        ({"subscription_id": "a:b"}, "subscription_id", "pattern"),
    ],
)
def test_a_bad_subscription_is_refused_naming_field_and_rule(
    fields: dict[str, object], field: str, rule: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        WEBHOOKS.decide(create(**fields), WEBHOOKS.initial_state())
    assert (refused.value.field, refused.value.rule) == (field, rule)


def test_filters_match_exact_names_prefixes_and_everything() -> None:
    state = WEBHOOKS.fold(
        WEBHOOKS.decide(
            create(event_types=("model.*", "metrics.logged"), models=("churn*", "fraud")),
            WEBHOOKS.initial_state(),
        )
    )
    assert state.wants("model.registered", "churn-eu")
    assert state.wants("metrics.logged", "fraud")
    assert not state.wants("artifact.blob_stored", "fraud")
    assert not state.wants("model.registered", "fraud-eu")
    assert not state.wants("model.registered", None)  # not a model's event
    every = WEBHOOKS.fold(WEBHOOKS.decide(create(), WEBHOOKS.initial_state()))
    assert every.wants("artifact.blob_stored", "anything")
    assert not every.wants("token.issued", "anything")


def principal(*permissions: Permission, scopes: tuple[str, ...] = ()) -> Principal:
    return Principal(
        name="p", token_id="t", roles=(), permissions=frozenset(permissions), scopes=scopes
    )


def test_managing_needs_write_over_every_model_the_subscription_delivers() -> None:
    churn_only = WEBHOOKS.fold(
        WEBHOOKS.decide(create(models=("churn*",)), WEBHOOKS.initial_state())
    )
    everything = WEBHOOKS.fold(WEBHOOKS.decide(create(), WEBHOOKS.initial_state()))
    scoped = principal(Permission.READ, Permission.WRITE, scopes=("churn*",))
    assert may_manage(scoped, churn_only)
    assert not may_manage(scoped, everything)
    assert not may_manage(principal(Permission.READ), churn_only)
    assert may_manage(principal(Permission.READ, Permission.WRITE), everything)
    assert pattern_within("churn-eu", ("churn*",)) and pattern_within("churn-eu*", ("churn*",))
    assert not pattern_within("churn*", ("churn",)) and not pattern_within("*", ("churn*",))


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1::248", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("224.0.0.1", False),
    ],
)
def test_only_public_addresses_are_reachable_by_default(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_the_back_off_doubles_with_jitter_up_to_its_ceiling() -> None:
    config = DeliveryConfig(backoff_initial=1.0, backoff_max=60.0)
    assert [backoff(n, config, lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(3, config, lambda: 0.0) == 2.0  # the lower half of the jitter
    assert backoff(200, config, lambda: 1.0) == 60.0


def test_the_mlflow_shape_covers_only_what_mlflow_has_webhooks_for() -> None:
    assert set(MLFLOW_EVENTS) == {
        "model.registered",
        "model.version_registered",
        "model.version_tags_set",
        "model.version_tags_removed",
        "model.alias_set",
        "model.alias_removed",
    }
    assert shape_has(PayloadFormat.MLFLOW, "model.alias_set")
    assert not shape_has(PayloadFormat.MLFLOW, "model.stage_transitioned")
    assert shape_has(PayloadFormat.MODELREG, "model.stage_transitioned")
