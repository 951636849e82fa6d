"""Prometheus metrics: requests by route, append conflicts, denials, and the pipeline lags.

Each app gets its own registry (tests build many apps in one process). Lags are read from
Postgres when ``/metrics`` is scraped, so they cost nothing between scrapes.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelreg_http_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelreg_http_request_duration_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.conflicts = Counter(
            "modelreg_append_conflicts_total",
            "Appends that lost optimistic concurrency and were re-decided",
            registry=self.registry,
        )
        self.denials = Counter(
            "modelreg_denied_total",
            "Requests refused for a missing permission",
            ["permission"],
            registry=self.registry,
        )
        self.unauthenticated_total = Counter(
            "modelreg_unauthenticated_total",
            "Requests without a valid token",
            registry=self.registry,
        )
        self.sealer_lag = Gauge(
            "modelreg_sealer_lag_events",
            "Committed events not yet in the global log",
            registry=self.registry,
        )
        self.projection_lag = Gauge(
            "modelreg_projection_lag_events",
            "Events behind the head of the log",
            ["projection"],
            registry=self.registry,
        )
        self.relay_lag = Gauge(
            "modelreg_relay_lag_events",
            "Sealed events not yet acknowledged by JetStream",
            ["publisher"],
            registry=self.registry,
        )
        self.head = Gauge(
            "modelreg_log_head_position", "Last sealed log position", registry=self.registry
        )

    def conflict(self) -> None:
        self.conflicts.inc()

    def denied(self, permission: str) -> None:
        self.denials.labels(permission).inc()

    def unauthenticated(self) -> None:
        self.unauthenticated_total.inc()

    async def render(self, pool: asyncpg.Pool) -> bytes:
        async with pool.acquire() as conn:
            state = await conn.fetchrow(
                "SELECT last_log_position, last_tx_id, last_seq FROM sealer_state WHERE id = 1"
            )
            assert state is not None
            head = state["last_log_position"]
            self.head.set(head)
            # Events past the sealer's cursor (committed or not yet): a bounded index scan.
            unsealed = await conn.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM events WHERE (tx_id, seq) > ($1::xid8, $2::bigint) LIMIT 100000) t",
                state["last_tx_id"],
                state["last_seq"],
            )
            self.sealer_lag.set(unsealed)
            for row in await conn.fetch(
                "SELECT projection, log_position FROM projection_checkpoints WHERE status = 'live'"
            ):
                self.projection_lag.labels(row["projection"]).set(head - row["log_position"])
            if await conn.fetchval("SELECT to_regclass('publication_checkpoints') IS NOT NULL"):
                for row in await conn.fetch(
                    "SELECT publisher, log_position FROM publication_checkpoints"
                ):
                    self.relay_lag.labels(row["publisher"]).set(head - row["log_position"])
        return generate_latest(self.registry)


def metrics_middleware(app: ASGIApp) -> ASGIApp:
    """Count and time every HTTP request by its route template (never the raw path)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, capture)
        finally:
            metrics: Any = getattr(scope["app"].state, "metrics", None)
            if metrics is not None:
                route = scope.get("path_template") or "unmatched"
                method = str(scope.get("method", "GET"))
                metrics.requests.labels(method, route, str(status)).inc()
                metrics.latency.labels(method, route).observe(time.perf_counter() - started)

    return middleware
