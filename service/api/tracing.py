"""Correlation ids, and whether this process traces. I/O: none (service.api.otel exports).

Every API request has a correlation id: the W3C trace id of the request as a UUID (from
its ``traceparent``, or from the span OpenTelemetry started for it), or a fresh UUID when
there is neither. It is recorded as the ``correlation_id`` of every event the request
appends, and said back in the ``Modelreg-Correlation-Id`` response header. ``traceparent``
is honoured whether or not tracing is on.

Tracing is off unless the standard variables ask for it: ``OTEL_TRACES_EXPORTER``
(``otlp``, ``console``; ``none`` is off) or an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); ``OTEL_SDK_DISABLED=true`` wins. Off, the
OpenTelemetry SDK is not even imported, and nothing of OpenTelemetry is in the request
path but reading a ``traceparent`` that was sent.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Mapping

from litestar.plugins import PluginProtocol
from litestar.types import Scope
from opentelemetry import trace
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

HEADER = "Modelreg-Correlation-Id"
CORRELATION_HEADER = HEADER.lower().encode()  # as an ASGI header name
_TRACEPARENT = b"traceparent"
_W3C = TraceContextTextMapPropagator()
_OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def correlate(scope: Scope) -> uuid.UUID:
    """The request's correlation id (``CORRELATION_ID``, said back in ``HEADER``); and,
    when the request is traced, its span named after the route template."""
    span = trace.get_current_span()
    if span.is_recording():
        template = scope.get("path_template", "")
        span.update_name(f"{scope.get('method', 'HTTP')} {template}")
        span.set_attribute(HTTP_ROUTE, template)
    return _correlation_id(span.get_span_context(), scope)


def _correlation_id(current: trace.SpanContext, scope: Scope) -> uuid.UUID:
    if not current.is_valid:
        traceparent = next((v for k, v in scope["headers"] if k == _TRACEPARENT), None)
        if traceparent is not None:
            carrier = {"traceparent": traceparent.decode("latin-1")}
            current = trace.get_current_span(_W3C.extract(carrier)).get_span_context()
    # A malformed traceparent extracts as invalid and is ignored, as W3C Trace Context asks.
    return uuid.UUID(int=current.trace_id) if current.is_valid else uuid.uuid4()


def requested_exporters(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the ``OTEL_*`` variables ask for; none: tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and any(environ.get(e) for e in _OTLP_ENDPOINTS):
        names = ["otlp"]
    return [name for name in names if name != "none"]


@functools.cache
def tracing_plugins() -> tuple[PluginProtocol, ...]:
    """The app plugins that trace this process's requests: none unless its environment
    asks for tracing. Set up once per process (a global provider, asyncpg instrumented)."""
    if not requested_exporters(os.environ):
        return ()
    # The SDK, the exporters and the instrumentations cost start-up time: only when asked.
    from service.api.otel import install

    return (install(os.environ),)
