"""Tracing is off unless the standard OTEL_* variables ask for it, and then traces start at
requests only."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.api.otel import build_tracer_provider, tracer_provider_from_environ
from service.settings import SettingsError


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": " "},
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "TRUE"},
        {"OTEL_SERVICE_NAME": "registry", "OTEL_TRACES_SAMPLER": "always_on"},
    ],
)
def test_tracing_is_off_unless_an_exporter_or_endpoint_is_configured(
    environ: dict[str, str],
) -> None:
    assert tracer_provider_from_environ(environ) is None


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "console"},
        {"OTEL_TRACES_EXPORTER": "otlp"},
        {"OTEL_TRACES_EXPORTER": "otlp, console"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
    ],
)
def test_an_exporter_or_an_otlp_endpoint_turns_tracing_on(environ: dict[str, str]) -> None:
    provider = tracer_provider_from_environ(environ)
    try:
        assert isinstance(provider, TracerProvider)
    finally:
        if provider is not None:
            provider.shutdown()


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            },
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
    ],
)
def test_an_exporter_modelreg_cannot_use_is_refused_naming_the_variable(
    environ: dict[str, str], variable: str
) -> None:
    with pytest.raises(SettingsError, match=f"^{variable}: "):
        tracer_provider_from_environ(environ)


def test_traces_start_at_requests_and_include_what_the_request_does() -> None:
    exported = InMemorySpanExporter()
    provider = build_tracer_provider(SimpleSpanProcessor(exported))
    tracer = provider.get_tracer("test")

    # given a background loop's query outside any request
    with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as background:
        assert not background.is_recording()
    # and a request that queries
    with (
        tracer.start_as_current_span("GET /api/v1/models", kind=SpanKind.SERVER) as request,
        tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as query,
    ):
        assert query.is_recording()

    # then only the request's trace is exported, with the query inside it
    spans = exported.get_finished_spans()
    assert [(s.name, s.kind) for s in spans] == [
        ("SELECT", SpanKind.CLIENT),
        ("GET /api/v1/models", SpanKind.SERVER),
    ]
    assert {s.context.trace_id for s in spans} == {request.get_span_context().trace_id}
    assert spans[0].parent is not None and spans[0].parent.span_id == spans[1].context.span_id
    assert spans[1].resource.attributes["service.name"] == "modelreg"
    provider.shutdown()
