"""``Idempotency-Key`` on POST: a retry gets the first response and records nothing new. I/O.

The first request with a key runs normally, with a deterministic id seed derived from the
principal and the key: its events get ids from that seed, so even two copies of the
request racing each other append once (the store recognises re-sent event ids). Its
response is kept; a later request with the same key and the same method, path and body
gets that response again (``Idempotent-Replayed: true``); the same key with a different
request is refused with 422 (rule ``reused``).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPRequestEvent, Message, Receive, ReceiveMessage, Scope, Send

from events.errors import ValidationError

HEADER = "idempotency-key"
SEED = "idempotency_seed"
_KEY = re.compile(r"[\x21-\x7e]{1,200}")
# Responses that carry a secret shown once are never stored.
_NOT_STORED = re.compile(r"^/api/v1/tokens$")


def id_seed(scope: Scope | dict[str, Any]) -> str | None:
    state = scope.get("state") or {}
    seed = state.get(SEED)
    return str(seed) if seed else None


def idempotency_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope.get("method") != "POST":
            await app(scope, receive, send)
            return
        key = dict(scope["headers"]).get(HEADER.encode())
        if key is None:
            await app(scope, receive, send)
            return
        text = key.decode("latin-1")
        if not _KEY.fullmatch(text):
            raise ValidationError("Idempotency-Key", "pattern", "an Idempotency-Key is 1-200 visible ASCII characters")
        body = await _read_body(receive)
        principal = scope.get("user")
        who = getattr(principal, "name", "anonymous")
        digest = hashlib.sha256(f"POST {scope['path']}\n".encode() + body).digest()
        services = scope["app"].state.services
        stored = await services.pool.fetchrow(
            "SELECT request_hash, status, headers, body FROM idempotency_keys WHERE principal = $1 AND key = $2",
            who, text,
        )
        if stored is not None:
            if bytes(stored["request_hash"]) != digest:
                raise ValidationError(
                    "Idempotency-Key", "reused",
                    "this Idempotency-Key was used for a different request; use a new key",
                )
            headers = [(k.encode(), v.encode()) for k, v in json.loads(stored["headers"])]
            headers.append((b"idempotent-replayed", b"true"))
            await send({"type": "http.response.start", "status": stored["status"], "headers": headers})
            await send({"type": "http.response.body", "body": bytes(stored["body"]), "more_body": False})
            return
        scope.setdefault("state", {})[SEED] = f"{who}:{text}"
        captured: list[Message] = []

        async def replay() -> ReceiveMessage:
            message: HTTPRequestEvent = {"type": "http.request", "body": body, "more_body": False}
            return message

        async def capture(message: Message) -> None:
            captured.append(message)

        await app(scope, replay, capture)
        start = next(m for m in captured if m["type"] == "http.response.start")
        status = int(start["status"])
        if 200 <= status < 300 and not _NOT_STORED.match(scope["path"]):
            response_body = b"".join(m.get("body", b"") for m in captured if m["type"] == "http.response.body")
            kept = [
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in start.get("headers", [])
                if k.lower() not in {b"content-length", b"date", b"server"}
            ]
            await services.pool.execute(
                "INSERT INTO idempotency_keys (principal, key, request_hash, status, headers, body)"
                " VALUES ($1, $2, $3, $4, $5::jsonb, $6) ON CONFLICT DO NOTHING",
                who, text, digest, status, json.dumps(kept), response_body,
            )
        for message in captured:
            await send(message)

    return middleware


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
