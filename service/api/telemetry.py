"""Prometheus metrics: Litestar's Prometheus controller (requests are counted by
service.api.http_metrics), prometheus-client's
process registry (with its process, platform and GC collectors), the registry's own
counters (append conflicts, denials, unauthenticated requests) and the pipeline lags.

Requests are counted and timed by route template, never by raw path (cardinality).
Everything lives in prometheus-client's process-wide ``REGISTRY``, as Litestar's middleware
requires: one set of series per process, however many apps it builds. The lags are read
from Postgres when ``/metrics`` is scraped, by the layers that own those tables, so they
cost nothing between scrapes.
"""

from __future__ import annotations

from typing import Any, cast

import asyncpg
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.plugins.prometheus import PrometheusController
from prometheus_client import Counter, Gauge

from eventlog.lags import sealing
from events.access import Permission
from projections.runner import projection_status
from service.api.auth import require
from service.publication.relay import publication_lag

APPEND_CONFLICTS = Counter(
    "modelreg_append_conflicts", "Appends that lost optimistic concurrency and were re-decided"
)
DENIALS = Counter("modelreg_denied", "Requests refused for a missing permission", ["permission"])
UNAUTHENTICATED = Counter("modelreg_unauthenticated", "Requests without a valid token")
SEALER_LAG = Gauge("modelreg_sealer_lag_events", "Committed events not yet in the global log")
PROJECTION_LAG = Gauge(
    "modelreg_projection_lag_events", "Events behind the head of the log", ["projection"]
)
RELAY_LAG = Gauge(
    "modelreg_relay_lag_events", "Sealed events not yet acknowledged by JetStream", ["publisher"]
)
LOG_HEAD = Gauge("modelreg_log_head_position", "Last sealed log position")


class ApiMetrics:
    """What the API and the command executor report, and the lags refreshed per scrape.

    ``nats_stream``: the JetStream stream whose publication lag is reported.
    """

    def __init__(self, nats_stream: str = "MODELREG_EVENTS") -> None:
        self.nats_stream = nats_stream

    def conflict(self) -> None:
        APPEND_CONFLICTS.inc()

    def denied(self, permission: str) -> None:
        DENIALS.labels(permission).inc()

    def unauthenticated(self) -> None:
        UNAUTHENTICATED.inc()

    async def refresh_lags(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as proxy:
            conn = cast(asyncpg.Connection, proxy)
            log = await sealing(conn)
            projections = await projection_status(conn)
            relay = await publication_lag(conn, self.nats_stream)
        LOG_HEAD.set(log.head)
        SEALER_LAG.set(log.unsealed)
        # Cleared first: a projection retired or renamed since the last scrape disappears.
        PROJECTION_LAG.clear()
        for status in projections:
            if status.status == "live":
                PROJECTION_LAG.labels(status.projection).set(status.lag_events)
        RELAY_LAG.labels(f"nats:{self.nats_stream}").set(relay)


def _readers_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    require(connection.user, Permission.READ)


async def _refresh_lags(request: Request[Any, Any, Any]) -> None:
    services = request.app.state.services
    await services.metrics.refresh_lags(services.pool)


class MetricsController(PrometheusController):
    """``/metrics`` in the Prometheus text format, for any token with the read permission."""

    path = "/metrics"
    tags = ["operations"]
    guards = [_readers_only]
    before_request = staticmethod(_refresh_lags)
