"""``Idempotency-Key`` on POST: a retry gets the first response and records nothing new. I/O.

The first request with a key claims it (a row with status ``RUNNING``) and runs normally,
with a deterministic id seed derived from the principal and the key: its events get ids
from that seed, so even copies of the request racing each other on different replicas
append once (the store recognises re-sent event ids). A copy arriving while the first
still runs waits for it (bounded: then 409). The claim lives only as long as its owner: the
owning process holds a session advisory lock on the key (``ClaimOwner``) while it runs the
request, so when the process is killed, or its connection is lost in a database outage,
Postgres frees the lock and a retry takes the claim over at once. A 2xx response is kept in place of the claim;
a later request with the same key and the same method, path and body gets that response
again (``Idempotent-Replayed: true``); the same key with a different request is refused
with 422 (rule ``reused``). Any other outcome releases the claim, so a retry runs again.

A response that carries a secret shown once (a new token, a new webhook's signing secret)
is not kept: only that the key was answered, and for which request; the handler answers a
retry itself, without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from litestar.types import ASGIApp, HTTPRequestEvent, Message, Receive, ReceiveMessage, Scope, Send

from eventlog.db import lock_key
from events.errors import ConflictError, ValidationError

HEADER = "idempotency-key"
SEED = "idempotency_seed"
_KEY = re.compile(r"[\x21-\x7e]{1,200}")
# Responses that carry a secret shown once are never stored.
_NOT_STORED = re.compile(r"^/api/v1/(tokens|webhooks)/?$")
# ``status`` of a key whose first request is still running, and of one answered without
# keeping the response (not HTTP statuses: only this module reads them).
RUNNING = 0
ANSWERED_UNKEPT = 1
# How long a copy waits for a first request whose owner is alive.
WAIT_SECONDS = 30.0
OWNER_STATE = "idempotency_claim_owner"

# ``abandoned``: no session holds the key's lock, so its owner is gone. (The probe takes
# the lock for the statement only; an owner claiming at that instant just tries again.)
_READ = (
    "SELECT request_hash, status, headers, body,"
    " pg_try_advisory_xact_lock(hashtextextended($3, 0)) AS abandoned"
    " FROM idempotency_keys WHERE principal = $1 AND key = $2"
)
_CLAIM = (
    "INSERT INTO idempotency_keys (principal, key, request_hash, status, headers, body)"
    " VALUES ($1, $2, $3, $4, '[]'::jsonb, ''::bytea) ON CONFLICT DO NOTHING RETURNING true"
)
_RELEASE = "DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2 AND status = $3"
_RELEASE_ABANDONED = _RELEASE + " AND pg_try_advisory_xact_lock(hashtextextended($4, 0))"
_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended($1, 0))"
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
        services = scope["app"].state.services
        pool: asyncpg.Pool = services.pool
        owner = claim_owner(scope["app"].state, pool)
        lock = claim_lock(services.settings.db_schema, who, text)
        stored, claim = await _claim(pool, owner, who, text, digest, lock)
        claimed = claim is not None
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
            if claim is not None:
                await _let_go(pool, owner, claim, who, text, kept=kept)
        for message in captured:
            await send(message)

    return middleware


async def _let_go(
    pool: asyncpg.Pool, owner: ClaimOwner, claim: Claim, who: str, key: str, *, kept: bool
) -> None:
    """End a claim: delete it unless the answer was kept in its place, then unlock."""
    try:
        if not kept:
            await pool.execute(_RELEASE, who, key, RUNNING)
    finally:
        # Even if the release failed (the database went away), the lock goes with its
        # session, so a retry can take the claim over.
        await owner.give_back(claim)


def claim_lock(schema: str, who: str, key: str) -> str:
    """The advisory lock (by name) that a live claim of ``key`` holds."""
    return lock_key(schema, f"idempotency:{who}:{key}")


@dataclass(frozen=True, slots=True, eq=False)
class Claim:
    lock: str
    conn: PoolConnectionProxy  # the owner's session that holds the lock


class ClaimOwner:
    """This process's session holding an advisory lock per key it is running requests for.

    One connection for all of them (taken from the pool while any claim is held), so
    claims cost no connection each; its calls take turns. If that session is lost, every
    lock it held is freed with it: a retry may then run beside a request still running
    here, which the deterministic event ids make harmless (the store records them once).
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: PoolConnectionProxy | None = None
        self._held = 0
        self._turn = asyncio.Lock()

    async def take(self, lock: str) -> Claim | None:
        async with self._turn:
            conn = self._conn
            if conn is None or conn.is_closed():
                await self._drop()
                conn = self._conn = await self._pool.acquire()
            try:
                got = await conn.fetchval(_TRY_LOCK, lock)
            except BaseException:
                await self._drop()
                raise
            if not got:
                if self._held == 0:  # hold the pool's connection only while claims need it
                    self._conn = None
                    await self._pool.release(conn)
                return None
            self._held += 1
            return Claim(lock, conn)

    async def give_back(self, claim: Claim) -> None:
        async with self._turn:
            if claim.conn is not self._conn:
                return  # that session is gone, and its locks with it
            try:
                await claim.conn.fetchval(_UNLOCK, claim.lock)
            except BaseException:
                await self._drop()  # ending the session frees every lock it held
                raise
            self._held -= 1
            if self._held == 0:
                self._conn = None
                await self._pool.release(claim.conn)

    async def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, 0
        if conn is not None:
            conn.terminate()
            with contextlib.suppress(Exception):
                await self._pool.release(conn)


def claim_owner(state: Any, pool: asyncpg.Pool) -> ClaimOwner:
    """The process's ``ClaimOwner``, kept in the app's state."""
    owner = state.get(OWNER_STATE)
    if owner is None:
        owner = ClaimOwner(pool)
        state[OWNER_STATE] = owner
    assert isinstance(owner, ClaimOwner)
    return owner


async def _claim(
    pool: asyncpg.Pool, owner: ClaimOwner, who: str, key: str, digest: bytes, lock: str
) -> tuple[asyncpg.Record | None, Claim | None]:
    """``(kept response, None)`` for a retry of an answered request; otherwise ``(None,
    claim)``: run the request, holding the key's claim if ``claim`` is not None."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    delay = 0.005
    while True:
        stored = await pool.fetchrow(_READ, who, key, lock)
        if stored is None:
            claim = await owner.take(lock)
            if claim is not None:
                try:
                    if await pool.fetchval(_CLAIM, who, key, digest, RUNNING):
                        return None, claim
                except BaseException:
                    await owner.give_back(claim)
                    raise
                await owner.give_back(claim)  # another copy claimed it a moment ago
                continue
            # else another copy is claiming it right now: wait below as for a running one
        elif stored["status"] != RUNNING:
            return _answered(stored, digest), None
        else:
            _refuse_reuse(stored, digest)
            if stored["abandoned"]:
                await pool.execute(_RELEASE_ABANDONED, who, key, RUNNING, lock)
                continue
        if loop.time() >= deadline:
            raise ConflictError(
                "the first request with this Idempotency-Key is still running; retry later", key=key
            )
        await asyncio.sleep(delay)
        delay = min(2 * delay, 0.1)


def _refuse_reuse(stored: asyncpg.Record, digest: bytes) -> None:
    """Refuse a key sent again with a different request (422 ``reused``)."""
    if bytes(stored["request_hash"]) != digest:
        raise ValidationError(
            "Idempotency-Key",
            "reused",
            "this Idempotency-Key was used for a different request; use a new key",
        )


def _answered(stored: asyncpg.Record, digest: bytes) -> asyncpg.Record | None:
    """The kept response to send again, or None when the handler answers the retry
    itself (a response that was not kept)."""
    _refuse_reuse(stored, digest)
    return None if stored["status"] == ANSWERED_UNKEPT else stored


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
