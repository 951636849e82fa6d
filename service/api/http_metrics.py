"""Every API request counted and timed for Prometheus, by route template (``service.api.
edge`` calls ``started`` and ``finished``). I/O: none (the series live in prometheus-
client's process-wide ``REGISTRY``; ``/metrics`` exports them).

The series and labels are those Litestar's Prometheus middleware exports (``method``,
``path`` as the route template, ``status_code``, ``app_name``), so dashboards and alert
rules read them unchanged. They replace that middleware because it cost about a tenth of
a small request's CPU here: it builds a ``Request`` and a label dict per request and looks
each series' child up by its label values four times. Here a child is looked up once per
(method, route, status) and kept.
"""

from __future__ import annotations

from typing import TypeAlias

from prometheus_client import Counter, Gauge, Histogram

APP_NAME = "modelreg"
_LABELS = ("method", "path", "status_code", "app_name")
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

REQUESTS = Counter("modelreg_http_requests_total", "Total requests", _LABELS)
DURATION = Histogram(
    "modelreg_http_request_duration_seconds",
    "Request duration, in seconds",
    _LABELS,
    buckets=_BUCKETS,
)
IN_PROGRESS = Gauge(
    "modelreg_http_requests_in_progress",
    "Total requests currently in progress",
    _LABELS,
    multiprocess_mode="livesum",
)
ERRORS = Counter("modelreg_http_requests_error_total", "Total errors in requests", _LABELS)

_Finished: TypeAlias = tuple[Counter, Histogram, Counter | None]

_running: dict[tuple[str, str], Gauge] = {}
_finished: dict[tuple[str, str, int], _Finished] = {}


def _running_child(method: str, path: str) -> Gauge:
    # Labelled as Litestar labels it: with the status a request starts with, 200.
    child = _running[method, path] = IN_PROGRESS.labels(method, path, 200, APP_NAME)
    return child


def _finished_children(method: str, path: str, status: int) -> _Finished:
    values = (method, path, status, APP_NAME)
    errors = ERRORS.labels(*values) if status >= 500 else None
    children = _finished[method, path, status] = (
        REQUESTS.labels(*values),
        DURATION.labels(*values),
        errors,
    )
    return children


def started(method: str, path: str) -> Gauge:
    """Count a request of route ``path`` in progress; answers what ``finished`` takes."""
    running = _running.get((method, path)) or _running_child(method, path)
    running.inc()
    return running


def finished(running: Gauge, method: str, path: str, status: int, elapsed: float) -> None:
    """Count and time a request ``started`` gave ``running`` for."""
    running.dec()
    count, duration, errors = _finished.get((method, path, status)) or _finished_children(
        method, path, status
    )
    count.inc()
    duration.observe(elapsed)
    if errors is not None:
        errors.inc()
