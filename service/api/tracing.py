"""Tracing and correlation. I/O: span export, when tracing is on.

Every API request has a correlation id: the W3C trace id of the request as a UUID (from
its ``traceparent``, or from the span OpenTelemetry started for it), or a fresh UUID when
there is neither. It is recorded as the ``correlation_id`` of every event the request
appends, and said back in the ``Modelreg-Correlation-Id`` response header. ``traceparent``
is honoured whether or not tracing is on.

Tracing (Litestar's OpenTelemetry plugin, and a span per Postgres statement from the
asyncpg instrumentation) is off unless the standard variables ask for it:
``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``; ``none`` is off) or an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``).
``OTEL_SDK_DISABLED=true`` wins. The exporter, sampler, batching and resource read their
own ``OTEL_*`` variables; ``service.name`` defaults to ``modelreg``. Off, nothing of
OpenTelemetry is in the request path but reading a ``traceparent`` that was sent.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from service.api.openapi import package_version
from service.commands.executor import CORRELATION_ID
from service.settings import SettingsError

HEADER = "Modelreg-Correlation-Id"
_HEADER = HEADER.lower().encode()
_TRACEPARENT = b"traceparent"
_W3C = TraceContextTextMapPropagator()
# Probes and scrapes every few seconds would bury the requests' traces.
_UNTRACED_PATHS = ["^/health/", "^/metrics$", "^/schema"]


def correlation_middleware(app: ASGIApp) -> ASGIApp:
    """Give the request its correlation id (``CORRELATION_ID``, the response header) and
    name its span after the route template."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        span = trace.get_current_span()
        correlation = _correlation_id(span.get_span_context(), scope)
        if span.is_recording():
            template = scope.get("path_template", "")
            span.update_name(f"{scope.get('method', 'HTTP')} {template}")
            span.set_attribute(HTTP_ROUTE, template)
        said = (_HEADER, str(correlation).encode())

        async def saying_it(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), said]}
            await send(message)

        token = CORRELATION_ID.set(correlation)
        try:
            await app(scope, receive, saying_it)
        finally:
            CORRELATION_ID.reset(token)

    return middleware


def _correlation_id(current: trace.SpanContext, scope: Scope) -> uuid.UUID:
    if not current.is_valid:
        traceparent = next((v for k, v in scope["headers"] if k == _TRACEPARENT), None)
        if traceparent is not None:
            carrier = {"traceparent": traceparent.decode("latin-1")}
            current = trace.get_current_span(_W3C.extract(carrier)).get_span_context()
    # A malformed traceparent extracts as invalid and is ignored, as W3C Trace Context asks.
    return uuid.UUID(int=current.trace_id) if current.is_valid else uuid.uuid4()


class RequestsOnly(Sampler):
    """Start traces at requests only (server spans); within a trace, ``inner`` decides.

    The sealer, the projection runner and the relay query Postgres many times a second
    outside any request; a root span for each would bury the requests' traces.
    """

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid and kind is not SpanKind.SERVER:
            return SamplingResult(Decision.DROP)
        return self.inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"RequestsOnly{{{self.inner.get_description()}}}"


def build_tracer_provider(*processors: SpanProcessor) -> TracerProvider:
    """A tracer provider exporting through ``processors``, sampling requests only."""
    resource = Resource.create({"service.name": "modelreg", "service.version": package_version()})
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (read by Resource.create) win.
    provider = TracerProvider(resource=resource)
    # The sampler the OTEL_TRACES_SAMPLER variables chose, applied within request traces.
    provider.sampler = RequestsOnly(provider.sampler)
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def tracer_provider_from_environ(environ: Mapping[str, str]) -> TracerProvider | None:
    """The tracer provider the ``OTEL_*`` variables configure, or ``None``: tracing off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not names and any(environ.get(e) for e in endpoints):
        names = ["otlp"]
    exporters = [_exporter(name, environ) for name in names if name != "none"]
    if not exporters:
        return None
    return build_tracer_provider(*(BatchSpanProcessor(e) for e in exporters))


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise SettingsError(
            f"OTEL_TRACES_EXPORTER: modelreg exports traces to otlp or console, or none (got {name!r})"
        )
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(variable, "").strip()
        if protocol and protocol != "http/protobuf":
            raise SettingsError(
                f"{variable}: modelreg speaks OTLP over http/protobuf (got {protocol!r})"
            )
        if protocol:
            break
    # Imported only when asked for: it brings protobuf and requests.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def tracing_plugin(provider: TracerProvider) -> OpenTelemetryPlugin:
    """Litestar's OpenTelemetry plugin: a server span per request, continuing the caller's
    ``traceparent``; the correlation middleware names it after the route."""
    return OpenTelemetryPlugin(
        OpenTelemetryConfig(
            tracer_provider=provider,
            scope_span_details_extractor=_span_details,
            exclude=_UNTRACED_PATHS,
            exclude_spans=["receive", "send"],
        )
    )


def _span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    # The raw path would make a span name per model; the route is known only after routing.
    return str(scope.get("method", "HTTP")), {}


@functools.cache
def process_tracing() -> TracerProvider | None:
    """This process's tracer provider from its environment (``None``: tracing off).

    Set up once per process: it becomes the global provider, and asyncpg (a process-wide
    patch) is instrumented with it.
    """
    provider = tracer_provider_from_environ(os.environ)
    if provider is not None:
        trace.set_tracer_provider(provider)
        AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    return provider
