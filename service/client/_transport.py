"""HTTP with safe retries, for both clients. I/O: the network.

Every POST carries an ``Idempotency-Key``, one per logical call, the same on each retry:
the server answers a repeated key with the first response and records nothing new, so a
retry after a lost answer can never register a second version. Retried, with exponential
backoff and jitter (or the server's ``Retry-After``): no answer at all (connection refused
or reset, timeouts, a connection dropped while the answer was read), 429, 502, 503, 504,
and the 409 saying the first attempt with the same key is still running. Everything else
is final: 2xx is returned, other errors raise typed ``ModelregError``s.

PUT, PATCH and DELETE are idempotent by design, so they are retried the same way; a
DELETE whose first attempt succeeded before its answer was lost may then report that the
thing is already gone (404/409).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any, TypeVar

import httpx
import msgspec

from service.client.errors import (
    ConfigurationError,
    ModelregError,
    ServerError,
    Unreachable,
    from_problem,
)
from service.client.signin import stored_token

log = logging.getLogger("modelreg.client")

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"
URL_VARIABLE = "MODELREG_URL"
TOKEN_VARIABLE = "MODELREG_TOKEN"  # noqa: S105 - the name of a variable, not a secret
POSITION_HEADER = "modelreg-position"
USER_AGENT = "modelreg-client/0.1"
Params = Mapping[str, Any]
QueryValue = str | int | float | bool | None
# A streamed request body, made anew for each attempt (a retry re-reads the file).
Content = Callable[[], Any]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry. ``attempts`` counts the first try too.

    The n-th retry waits ``backoff * 2**(n-1)`` seconds, capped at ``max_backoff`` and
    scaled by a random factor in [0.5, 1] so many clients do not retry in step; a
    ``Retry-After`` from the server is honoured instead (up to ``max_retry_after``).
    """

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 10.0
    max_retry_after: float = 60.0
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 502, 503, 504}))

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_retry_after))
        ceiling = min(self.max_backoff, self.backoff * float(2 ** (retry - 1)))
        return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not secrecy


NO_RETRIES = RetryPolicy(attempts=1)
RETRIES_VARIABLE = "MODELREG_RETRIES"


def default_retry() -> RetryPolicy:
    """``RetryPolicy()``, with ``attempts`` from ``MODELREG_RETRIES`` when set (1: no retries)."""
    text = os.environ.get(RETRIES_VARIABLE, "").strip()
    if not text:
        return RetryPolicy()
    if not text.isdigit() or int(text) < 1:
        raise ConfigurationError(
            f"{RETRIES_VARIABLE}: expected a number of attempts >= 1, got {text!r}"
        )
    return RetryPolicy(attempts=int(text))


def resolve(url: str | None, token: str | None) -> tuple[str, str]:
    """The registry's base URL and the token: arguments, else ``MODELREG_URL`` and
    ``MODELREG_TOKEN``, else the credential ``modelreg login`` stored (and its registry),
    else ``http://127.0.0.1:8000`` and an error."""
    given = (url or os.environ.get(URL_VARIABLE) or "").strip().rstrip("/")
    secret = (token or os.environ.get(TOKEN_VARIABLE) or "").strip()
    if not secret:
        stored = stored_token(given.removesuffix(API_PREFIX) or None)
        if stored is None:
            raise ConfigurationError(
                f"no token: pass token=... or set {TOKEN_VARIABLE} (or run modelreg login)"
            )
        given = given or stored[0]
        secret = stored[1]
    base = given or DEFAULT_URL
    try:
        parsed = httpx.URL(base)
    except httpx.InvalidURL as exc:
        raise ConfigurationError(f"{URL_VARIABLE}: {base!r} is not a URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigurationError(
            f"{URL_VARIABLE}: {base!r} is not an http(s) URL, e.g. {DEFAULT_URL}"
        )
    base = base.removesuffix(API_PREFIX)
    return base, secret


def query(params: Params | None) -> list[tuple[str, QueryValue]]:
    """Query parameters as the API reads them: None dropped, lists repeated, booleans lower case."""
    found: list[tuple[str, QueryValue]] = []
    for key, value in (params or {}).items():
        values = value if isinstance(value, list | tuple | set | frozenset) else [value]
        for item in values:
            if item is None:
                continue
            if isinstance(item, bool):
                found.append((key, "true" if item else "false"))
            elif isinstance(item, Enum):
                found.append((key, str(item.value)))
            elif isinstance(item, datetime):
                found.append((key, item.isoformat()))
            else:
                found.append((key, str(item)))
    return found


def encode(body: Any) -> bytes:
    return msgspec.json.encode(body)


def decode(response: httpx.Response, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(response.content, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ModelregError(
            f"unexpected answer from {response.request.method} {response.request.url.path}: {exc}",
            status=response.status_code,
            method=response.request.method,
            url=str(response.request.url),
        ) from None


def etag_version(response: httpx.Response) -> int:
    """The stream version an ``ETag`` header carries (``"3"`` or ``W/"3"``)."""
    value = response.headers.get("etag", "").strip().removeprefix("W/").strip('"')
    if not value.isdigit():
        raise ServerError(
            f"{response.request.url} sent no usable ETag ({response.headers.get('etag')!r})",
            status=None,
        )
    return int(value)


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def still_running(response: httpx.Response, idempotency_key: str | None) -> bool:
    """409 for a copy of a request whose first attempt (same key) the server is still
    running: worth waiting for, unlike any other conflict."""
    if response.status_code != 409 or idempotency_key is None:
        return False
    try:
        problem = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return False
    details = problem.get("details") if isinstance(problem, dict) else None
    return isinstance(details, dict) and details.get("key") == idempotency_key


def error_of(response: httpx.Response) -> ModelregError:
    problem: dict[str, Any] = {}
    try:
        decoded = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        decoded = None
    if isinstance(decoded, dict):
        problem = decoded
    request = response.request
    return from_problem(
        response.status_code,
        problem,
        method=request.method,
        url=str(request.url),
        text=response.text,
    )


def unreachable(method: str, url: str, exc: Exception, attempts: int) -> Unreachable:
    reason = str(exc) or type(exc).__name__
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return Unreachable(
        f"cannot reach the registry at {url}{tries}: {reason}", method=method, url=url
    )


# Worth another try: the request may not have arrived, or its answer was lost. Not:
# malformed URLs, unsupported schemes, proxy misconfiguration.
RETRIED_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class _Base:
    def __init__(self, retry: RetryPolicy) -> None:
        self.retry = retry
        self.last_position: int | None = None

    @staticmethod
    def headers(
        method: str,
        body: bytes | None,
        idempotency_key: str | None,
        if_version: int | None,
        extra: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        headers: dict[str, str] = dict(extra or {})
        if body is not None:
            headers["Content-Type"] = "application/json"
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or new_key()
        if if_version is not None:
            # The model's stream version, as its ETag gives it: the write happens only if
            # nothing else was written to the model since (412 PreconditionFailed if it was).
            headers["If-Match"] = f'"{int(if_version)}"'
        return headers

    def seen(self, method: str, response: httpx.Response) -> None:
        """Remember the log position a write reached (read-your-writes)."""
        if method == "GET":
            return
        value = response.headers.get(POSITION_HEADER)
        if value and value.isdigit():
            self.last_position = max(self.last_position or 0, int(value))

    def wait(
        self, method: str, path: str, attempt: int, why: str, response: httpx.Response | None
    ) -> float:
        delay = self.retry.delay(attempt, retry_after(response) if response is not None else None)
        log.info(
            "modelreg: %s %s: %s; retry %d of %d in %.2f s",
            method,
            path,
            why,
            attempt,
            self.retry.attempts - 1,
            delay,
        )
        return delay


def new_key() -> str:
    return str(uuid.uuid4())


def common_headers(token: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "User-Agent": USER_AGENT,
        "Accept": "application/json",
        **(extra or {}),
    }


class AsyncTransport(_Base):
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float,
        retry: RetryPolicy,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(retry)
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers=common_headers(token, headers),
            timeout=timeout,
            transport=transport,
        )

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: bytes | None = None,
        idempotency_key: str | None = None,
        if_version: int | None = None,
        content: Content | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One request with the retries above. ``content`` (instead of ``body``) streams
        the body, made anew by each attempt; ``headers`` are added to the usual ones."""
        sent = self.headers(method, body, idempotency_key, if_version, headers)
        attempts = max(1, self.retry.attempts)
        for attempt in range(1, attempts + 1):
            try:
                response = await self.http.request(
                    method,
                    path,
                    params=query(params),
                    content=body if content is None else content(),
                    headers=sent,
                )
            except RETRIED_ERRORS as exc:
                if attempt == attempts:
                    raise unreachable(method, str(self.http.base_url), exc, attempts) from exc
                await asyncio.sleep(self.wait(method, path, attempt, type(exc).__name__, None))
                continue
            if attempt < attempts and (
                response.status_code in self.retry.statuses
                or still_running(response, sent.get("Idempotency-Key"))
            ):
                await asyncio.sleep(
                    self.wait(method, path, attempt, f"HTTP {response.status_code}", response)
                )
                continue
            if response.status_code >= 400:
                raise error_of(response)
            self.seen(method, response)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def blocking(self, work: Callable[[], T]) -> T:
        """File I/O (hashing) off the event loop."""
        return await asyncio.to_thread(work)

    async def each(
        self, items: Sequence[T], work: Callable[[T], Awaitable[R]], limit: int
    ) -> list[R]:
        """``work`` on every item, at most ``limit`` at a time; the results in order. The
        first failure cancels the rest and is raised."""
        gate = asyncio.Semaphore(max(1, limit))

        async def bounded(item: T) -> R:
            async with gate:
                return await work(item)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(bounded(item)) for item in items]
        except ExceptionGroup as failed:
            # The caller expects the error itself, as the sync client raises it.
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]

    def stream(
        self, method: str, path: str, headers: Mapping[str, str]
    ) -> AbstractAsyncContextManager[httpx.Response]:
        """A response whose body is read as it arrives (no retries here: the caller resumes)."""
        return self.http.stream(method, path, headers=headers)

    async def aclose(self) -> None:
        await self.http.aclose()


class SyncTransport(_Base):
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float,
        retry: RetryPolicy,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(retry)
        self.http = httpx.Client(
            base_url=base_url,
            headers=common_headers(token, headers),
            timeout=timeout,
            transport=transport,
        )

    def send(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: bytes | None = None,
        idempotency_key: str | None = None,
        if_version: int | None = None,
        content: Content | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One request with the retries above. ``content`` (instead of ``body``) streams
        the body, made anew by each attempt; ``headers`` are added to the usual ones."""
        sent = self.headers(method, body, idempotency_key, if_version, headers)
        attempts = max(1, self.retry.attempts)
        for attempt in range(1, attempts + 1):
            try:
                response = self.http.request(
                    method,
                    path,
                    params=query(params),
                    content=body if content is None else content(),
                    headers=sent,
                )
            except RETRIED_ERRORS as exc:
                if attempt == attempts:
                    raise unreachable(method, str(self.http.base_url), exc, attempts) from exc
                time.sleep(self.wait(method, path, attempt, type(exc).__name__, None))
                continue
            if attempt < attempts and (
                response.status_code in self.retry.statuses
                or still_running(response, sent.get("Idempotency-Key"))
            ):
                time.sleep(
                    self.wait(method, path, attempt, f"HTTP {response.status_code}", response)
                )
                continue
            if response.status_code >= 400:
                raise error_of(response)
            self.seen(method, response)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def blocking(self, work: Callable[[], T]) -> T:
        return work()

    def each(self, items: Sequence[T], work: Callable[[T], R], limit: int) -> list[R]:
        """``work`` on every item in ``limit`` threads (httpx.Client is thread-safe); the
        results in order. The first failure is raised once the running ones finished."""
        if limit <= 1 or len(items) <= 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(max_workers=limit, thread_name_prefix="modelreg") as pool:
            futures = [pool.submit(work, item) for item in items]
            try:
                return [future.result() for future in futures]
            finally:
                for future in futures:
                    future.cancel()

    def stream(
        self, method: str, path: str, headers: Mapping[str, str]
    ) -> AbstractContextManager[httpx.Response]:
        """A response whose body is read as it arrives (no retries here: the caller resumes)."""
        return self.http.stream(method, path, headers=headers)

    def close(self) -> None:
        self.http.close()
