"""With tracing on: a server span per request (continuing the caller's ``traceparent``) with
a span per Postgres statement inside it, the trace id as the correlation id, and no traces
for probes, scrapes or the background loops.

Spans are collected in memory here; ``test_modelreg_serve_exports_spans_when_configured``
turns tracing on the way an operator does, through OTEL_* variables.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.api.otel import build_tracer_provider, tracing_plugin
from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.registry_server import RegistryServer, registry_server

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"


@pytest.fixture
async def traced(db: Database) -> AsyncIterator[tuple[Api, InMemorySpanExporter]]:
    exported = InMemorySpanExporter()
    provider = build_tracer_provider(SimpleSpanProcessor(exported))
    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    instrumentor.instrument(tracer_provider=provider)
    try:
        async with running_api(db, plugins=[tracing_plugin(provider)]) as api:
            yield api, exported
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def in_trace(spans: tuple[ReadableSpan, ...], trace_id: int) -> list[ReadableSpan]:
    return [s for s in spans if s.context is not None and s.context.trace_id == trace_id]


async def test_a_request_continues_the_callers_trace_with_its_queries_inside(
    traced: tuple[Api, InMemorySpanExporter],
) -> None:
    api, exported = traced

    # when a write arrives with a traceparent
    created = await api.post(
        "/api/v1/models", json={"name": "churn"}, headers={"traceparent": TRACEPARENT}
    )
    assert created.status_code == 201, created.text

    # then its server span continues the caller's trace, named after the route
    spans = in_trace(exported.get_finished_spans(), int(TRACE_ID, 16))
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert server.name == "POST /api/v1/models"
    assert server.parent is not None and server.parent.span_id == int(PARENT_SPAN_ID, 16)
    assert server.attributes is not None and server.attributes["http.route"] == "/api/v1/models"
    # and the statements it ran are spans inside it
    queries = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert queries and all(
        q.attributes and q.attributes["db.system"] == "postgresql" for q in queries
    )
    # and the trace id is the correlation id it recorded and said
    assert created.headers["Modelreg-Correlation-Id"] == str(uuid.UUID(TRACE_ID))
    page = (await api.get("/api/v1/events", params={"model": "churn"})).json()
    assert [i["envelope"]["correlation_id"] for i in page["items"]] == [str(uuid.UUID(TRACE_ID))]


async def test_a_request_without_traceparent_starts_a_trace_whose_id_it_records(
    traced: tuple[Api, InMemorySpanExporter],
) -> None:
    api, exported = traced
    created = await api.post("/api/v1/models", json={"name": "fraud"})
    assert created.status_code == 201, created.text

    correlation = uuid.UUID(created.headers["Modelreg-Correlation-Id"])
    (server,) = [
        s
        for s in in_trace(exported.get_finished_spans(), correlation.int)
        if s.kind is SpanKind.SERVER
    ]
    assert server.parent is None and server.name == "POST /api/v1/models"


async def test_probes_scrapes_and_background_loops_start_no_traces(
    traced: tuple[Api, InMemorySpanExporter],
) -> None:
    api, exported = traced
    # given a request, so the sealer and the views have work to do in the background
    created = await api.post("/api/v1/models", json={"name": "churn"})
    assert created.status_code == 201, created.text
    position = created.headers["Modelreg-Position"]
    assert (await api.get(f"/api/v1/models/churn?min_position={position}")).status_code == 200

    # when Prometheus scrapes (its lag queries run outside any request trace)
    assert (await api.get("/metrics")).status_code == 200

    # then every exported span belongs to one of the two API requests' traces
    traces = {s.context.trace_id for s in exported.get_finished_spans() if s.context}
    roots = [s for s in exported.get_finished_spans() if s.parent is None]
    assert len(traces) == 2 and len(roots) == 2, [s.name for s in roots]
    assert {r.name for r in roots} == {"POST /api/v1/models", "GET /api/v1/models/{name}"}


# ---------------------------------------------------------------- `modelreg serve`, configured


@pytest.fixture
def serving_with_console_traces(
    database_url: str, nats_url: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RegistryServer]:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # milliseconds: export promptly
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


def exported_spans(log: Path) -> list[dict[str, Any]]:
    """The spans the console exporter printed (indented JSON objects) among the log lines."""
    blocks = re.findall(r"^\{\n.*?^\}$", log.read_text(), re.MULTILINE | re.DOTALL)
    return [json.loads(block) for block in blocks]


def test_modelreg_serve_exports_spans_when_configured(
    serving_with_console_traces: RegistryServer,
) -> None:
    server = serving_with_console_traces
    created = httpx.post(
        f"{server.url}/api/v1/models",
        json={"name": "churn"},
        headers={"Authorization": f"Bearer {server.admin_token}", "traceparent": TRACEPARENT},
    )
    assert created.status_code == 201, created.text
    assert created.headers["Modelreg-Correlation-Id"] == str(uuid.UUID(TRACE_ID))

    # the batch processor exports within its schedule delay: wait for the server span
    deadline = time.monotonic() + 30
    mine: list[dict[str, Any]] = []
    while not any(s["kind"] == "SpanKind.SERVER" for s in mine) and time.monotonic() < deadline:
        time.sleep(0.05)
        mine = [
            s for s in exported_spans(server.log) if s["context"]["trace_id"] == f"0x{TRACE_ID}"
        ]
    kinds = {(s["name"], s["kind"]) for s in mine}
    assert ("POST /api/v1/models", "SpanKind.SERVER") in kinds, server.log.read_text()[-3000:]
    assert any(kind == "SpanKind.CLIENT" for _, kind in kinds), kinds
    assert all(s["resource"]["attributes"]["service.name"] == "modelreg" for s in mine)


def test_with_tracing_off_the_sdk_is_not_even_loaded() -> None:
    # What tracing costs when off: nothing but reading a traceparent that was sent. (Litestar
    # itself imports its OpenTelemetry plugin module, with the ASGI instrumentation, when
    # it is installed; it stays unused.)
    probe = (
        "import sys\n"
        "from service.api.app import create_app\n"
        "app = create_app(None)\n"
        "print(sorted(type(p).__name__ for p in app.plugins))\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk',"
        " 'opentelemetry.instrumentation.asyncpg', 'opentelemetry.exporter'))))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    plugins, loaded = done.stdout.splitlines()
    assert "OpenTelemetryPlugin" not in plugins
    assert loaded == "[]", loaded
