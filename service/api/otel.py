"""OpenTelemetry tracing, when the ``OTEL_*`` variables turn it on (service.api.tracing
decides, and imports this module only then). I/O: span export.

A server span per request from Litestar's OpenTelemetry plugin, continuing the caller's
``traceparent``, and a span per Postgres statement from the asyncpg instrumentation. The
exporters (``otlp`` over HTTP/protobuf, ``console``), sampler, batching and resource read
their own ``OTEL_*`` variables; ``service.name`` defaults to ``modelreg``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from litestar.types import Scope
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from service.api.openapi import package_version
from service.api.tracing import requested_exporters
from service.settings import SettingsError

# Probes and scrapes every few seconds would bury the requests' traces.
_UNTRACED_PATHS = ["^/health/", "^/metrics$", "^/schema"]


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
    exporters = [_exporter(name, environ) for name in requested_exporters(environ)]
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


def install(environ: Mapping[str, str]) -> OpenTelemetryPlugin:
    """Trace this process as ``environ`` says (it asks for at least one exporter): the
    provider becomes the global one, asyncpg (a process-wide patch) is instrumented with it,
    and the returned plugin traces an app's requests."""
    provider = tracer_provider_from_environ(environ)
    assert provider is not None, "called only when an exporter is requested"
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    return tracing_plugin(provider)
