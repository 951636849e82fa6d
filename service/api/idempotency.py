"""``Idempotency-Key`` on POST: a retry gets the first response and records nothing new. I/O.

The first request with a key claims it (a row with status ``RUNNING``) and runs normally,
with a deterministic id seed derived from the principal and the key: its events get ids
from that seed, so even copies of the request racing each other on different replicas
append once (the store recognises re-sent event ids). A copy arriving while the first
still runs waits for it (bounded: then 409). A 2xx response is kept in place of the claim;
a later request with the same key and the same method, path and body gets that response
again (``Idempotent-Replayed: true``); the same key with a different request is refused
with 422 (rule ``reused``). Any other outcome releases the claim, so a retry runs again.

A response that carries a secret shown once (a new token) is not kept: only that the key
was answered, and for which request; the handler answers a retry itself, without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from typing import Any

import asyncpg
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from litestar.types import ASGIApp, HTTPRequestEvent, Message, Receive, ReceiveMessage, Scope, Send

from events.errors import ConflictError, ValidationError

HEADER = "idempotency-key"
SEED = "idempotency_seed"
_KEY = re.compile(r"[\x21-\x7e]{1,200}")
# Responses that carry a secret shown once are never stored.
_NOT_STORED = re.compile(r"^/api/v1/tokens$")
# ``status`` of a key whose first request is still running, and of one answered without
# keeping the response (not HTTP statuses: only this module reads them).
RUNNING = 0
ANSWERED_UNKEPT = 1
# How long a copy waits for the first request; a claim older than ABANDONED_AFTER is
# presumed left by a process that died, and may be taken over.
WAIT_SECONDS = 30.0
ABANDONED_AFTER_SECONDS = 120.0

_READ = (
    "SELECT request_hash, status, headers, body,"
    " created_at < statement_timestamp() - make_interval(secs => $3) AS abandoned"
    " FROM idempotency_keys WHERE principal = $1 AND key = $2"
)
_CLAIM = (
    "INSERT INTO idempotency_keys (principal, key, request_hash, status, headers, body)"
    " VALUES ($1, $2, $3, $4, '[]'::jsonb, ''::bytea) ON CONFLICT DO NOTHING RETURNING true"
)
_RELEASE = "DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2 AND status = $3"
_RELEASE_ABANDONED = (
    _RELEASE + " AND created_at < statement_timestamp() - make_interval(secs => $4)"
)
_KEEP = (
    "INSERT INTO idempotency_keys (principal, key, request_hash, status, headers, body)"
    " VALUES ($1, $2, $3, $4, $5::jsonb, $6) ON CONFLICT DO NOTHING"
)


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
            raise ValidationError(
                "Idempotency-Key", "pattern", "an Idempotency-Key is 1-200 visible ASCII characters"
            )
        body = await _read_body(scope, receive)
        principal = scope.get("user")
        who = getattr(principal, "name", "anonymous")
        digest = hashlib.sha256(f"POST {scope['path']}\n".encode() + body).digest()
        pool: asyncpg.Pool = scope["app"].state.services.pool
        stored, claimed = await _claim(pool, who, text, digest)
        if stored is not None:
            headers = [(k.encode(), v.encode()) for k, v in json.loads(stored["headers"])]
            headers.append((b"idempotent-replayed", b"true"))
            await send(
                {"type": "http.response.start", "status": stored["status"], "headers": headers}
            )
            await send(
                {"type": "http.response.body", "body": bytes(stored["body"]), "more_body": False}
            )
            return
        scope.setdefault("state", {})[SEED] = f"{who}:{text}"
        captured: list[Message] = []

        async def replay() -> ReceiveMessage:
            message: HTTPRequestEvent = {"type": "http.request", "body": body, "more_body": False}
            return message

        async def capture(message: Message) -> None:
            captured.append(message)

        kept = False
        try:
            await app(scope, replay, capture)
            start = next(m for m in captured if m["type"] == "http.response.start")
            status = int(start["status"])
            if claimed and 200 <= status < 300:
                if _NOT_STORED.match(scope["path"]):
                    answer: tuple[int, str, bytes] = (ANSWERED_UNKEPT, "[]", b"")
                else:
                    response_body = b"".join(
                        m.get("body", b"") for m in captured if m["type"] == "http.response.body"
                    )
                    headers_kept = [
                        (k.decode("latin-1"), v.decode("latin-1"))
                        for k, v in start.get("headers", [])
                        if k.lower() not in {b"content-length", b"date", b"server"}
                    ]
                    answer = (status, json.dumps(headers_kept), response_body)
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(_RELEASE, who, text, RUNNING)
                    await conn.execute(_KEEP, who, text, digest, *answer)
                kept = True
        finally:
            if claimed and not kept:
                await pool.execute(_RELEASE, who, text, RUNNING)
        for message in captured:
            await send(message)

    return middleware


async def _claim(
    pool: asyncpg.Pool, who: str, key: str, digest: bytes
) -> tuple[asyncpg.Record | None, bool]:
    """``(kept response, None)`` for a retry of an answered request; otherwise ``(None,
    claimed)``: run the request, holding the key's claim if ``claimed``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    delay = 0.005
    while True:
        stored = await pool.fetchrow(_READ, who, key, ABANDONED_AFTER_SECONDS)
        if stored is None:
            if await pool.fetchval(_CLAIM, who, key, digest, RUNNING):
                return None, True
            continue  # another copy claimed it a moment ago
        if bytes(stored["request_hash"]) != digest:
            raise ValidationError(
                "Idempotency-Key",
                "reused",
                "this Idempotency-Key was used for a different request; use a new key",
            )
        if stored["status"] == ANSWERED_UNKEPT:
            return None, False  # the handler recognises the retry and answers it
        if stored["status"] != RUNNING:
            return stored, False
        if stored["abandoned"]:
            await pool.execute(_RELEASE_ABANDONED, who, key, RUNNING, ABANDONED_AFTER_SECONDS)
            continue
        if loop.time() >= deadline:
            raise ConflictError(
                "the first request with this Idempotency-Key is still running; retry later", key=key
            )
        await asyncio.sleep(delay)
        delay = min(2 * delay, 0.1)


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    """The whole body, which the request hash needs, within the route's size cap: a larger
    one is refused (413) on its Content-Length, or as soon as the bytes read pass the cap,
    so its remainder is never read nor held."""
    handler = scope["route_handler"]
    cap = handler.resolve_request_max_body_size() if isinstance(handler, HTTPRouteHandler) else None
    declared = dict(scope["headers"]).get(b"content-length")
    # On the length first: int() refuses over 4,300 digits with a ValueError.
    if (
        cap is not None
        and declared is not None
        and declared.isdigit()
        and (len(declared) > len(str(cap)) or int(declared) > cap)
    ):
        raise _too_large(cap)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if cap is not None and size > cap:
            raise _too_large(cap)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _too_large(cap: int) -> HTTPException:
    return HTTPException(status_code=413, detail=f"the request body is larger than {cap} bytes")
