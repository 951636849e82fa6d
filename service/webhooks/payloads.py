"""What a delivery sends: the body and the signature headers, in either payload shape. No I/O.

Every delivery is signed as Standard Webhooks (https://www.standardwebhooks.com/) says:
``webhook-id`` (the event id, the same on every retry and redelivery, so a receiver can drop
duplicates), ``webhook-timestamp`` (unix seconds of this attempt) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 over ``id.timestamp.body`` with the base64-decoded secret),
computed by the ``standardwebhooks`` library that receivers can verify with.

``modelreg`` shape: ``{"type", "timestamp", "log_position", "model", "data"}`` where ``data``
is the event's envelope exactly as the log stores it (its hash covers those bytes).

``mlflow`` shape: MLflow's own ``{"entity", "action", "timestamp", "data"}`` for the events
MLflow has webhooks for (model registered, version created, version tag set/deleted,
alias set/removed), with MLflow's headers ``X-MLflow-Delivery-Id``, ``X-MLflow-Timestamp``
and ``X-MLflow-Signature`` (MLflow keys the HMAC with the secret's UTF-8 text as given), so
a receiver written for MLflow webhooks works unchanged. Other events are not sent to an
``mlflow`` subscription.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from standardwebhooks.webhooks import Webhook

from eventlog.log import LoggedEvent
from events.webhooks import PayloadFormat

_encoder = msgspec.json.Encoder(order="sorted")

MLFLOW_DELIVERY_ID = "X-MLflow-Delivery-Id"
MLFLOW_TIMESTAMP = "X-MLflow-Timestamp"
MLFLOW_SIGNATURE = "X-MLflow-Signature"

MlflowMessage = tuple[str, str, dict[str, Any]]  # entity, action, data


def _registered(name: str, data: dict[str, Any]) -> list[MlflowMessage]:
    return [
        (
            "registered_model",
            "created",
            {"name": name, "tags": data.get("tags", {}), "description": data.get("description")},
        )
    ]


def _version_created(name: str, data: dict[str, Any]) -> list[MlflowMessage]:
    run = (data.get("content") or {}).get("run") or {}
    return [
        (
            "model_version",
            "created",
            {
                "name": name,
                "version": str(data["version"]),
                "source": f"models:/{name}/{data['version']}",
                "run_id": run.get("run_id"),
                "tags": data.get("tags", {}),
                "description": data.get("description"),
            },
        )
    ]


def _tags_set(name: str, data: dict[str, Any]) -> list[MlflowMessage]:
    version = str(data["version"])
    return [
        ("model_version_tag", "set", {"name": name, "version": version, "key": k, "value": v})
        for k, v in sorted(data.get("tags", {}).items())
    ]


def _tags_removed(name: str, data: dict[str, Any]) -> list[MlflowMessage]:
    version = str(data["version"])
    return [
        ("model_version_tag", "deleted", {"name": name, "version": version, "key": k})
        for k in data.get("keys", [])
    ]


def _alias_set(name: str, data: dict[str, Any]) -> list[MlflowMessage]:
    return [
        (
            "model_version_alias",
            "created",
            {"name": name, "alias": data["alias"], "version": str(data["version"])},
        )
    ]


def _alias_removed(name: str, data: dict[str, Any]) -> list[MlflowMessage]:
    return [("model_version_alias", "deleted", {"name": name, "alias": data["alias"]})]


MLFLOW_EVENTS: dict[str, Callable[[str, dict[str, Any]], list[MlflowMessage]]] = {
    "model.registered": _registered,
    "model.version_registered": _version_created,
    "model.version_tags_set": _tags_set,
    "model.version_tags_removed": _tags_removed,
    "model.alias_set": _alias_set,
    "model.alias_removed": _alias_removed,
}


def shape_has(payload_format: PayloadFormat, event_type: str) -> bool:
    """Whether a subscription of this shape has anything to send for ``event_type``."""
    return payload_format is PayloadFormat.MODELREG or event_type in MLFLOW_EVENTS


def body_of(
    payload_format: PayloadFormat, event: LoggedEvent, raw_envelope: bytes, model_name: str
) -> bytes:
    """The request body for ``event`` (its envelope's stored bytes in ``raw_envelope``)."""
    envelope = event.envelope
    if payload_format is PayloadFormat.MODELREG:
        return _encoder.encode(
            {
                "type": envelope.event_type,
                "timestamp": envelope.occurred_at,
                "log_position": event.log_position,
                "model": model_name,
                "data": msgspec.Raw(raw_envelope),
            }
        )
    data = msgspec.json.decode(envelope.data)
    messages = MLFLOW_EVENTS[envelope.event_type](model_name, data)
    # One modelreg event may be several MLflow ones (tags set in one go): a list in order,
    # or the single object an MLflow receiver expects.
    shaped = [
        {"entity": entity, "action": action, "timestamp": envelope.occurred_at, "data": fields}
        for entity, action, fields in messages
    ]
    return _encoder.encode(shaped[0] if len(shaped) == 1 else shaped)


def signed_headers(
    payload_format: PayloadFormat, secret: str, message_id: str, body: bytes, now: datetime
) -> dict[str, str]:
    """The headers of one attempt: Standard Webhooks always, MLflow's too for that shape."""
    moment = now.astimezone(UTC)
    timestamp = str(int(moment.timestamp()))
    headers = {
        "content-type": "application/json",
        "user-agent": "modelreg-webhooks",
        "webhook-id": message_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": Webhook(secret).sign(message_id, moment, body),
    }
    if payload_format is PayloadFormat.MLFLOW:
        signed = f"{message_id}.{timestamp}.".encode() + body
        digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
        headers[MLFLOW_DELIVERY_ID] = message_id
        headers[MLFLOW_TIMESTAMP] = timestamp
        headers[MLFLOW_SIGNATURE] = "v1," + base64.b64encode(digest).decode()
    return headers
