"""The Dockerfile's HEALTHCHECK command, run for real (a subprocess) against a stub server."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from service.api.app import health_router
from tests.unit.test_deploy_static import dockerfile


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Handler", (_Health,), {"paths": [], "status": 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def test_dockerfile_healthcheck_probes_health_live_on_modelreg_port(
    health_server: tuple[int, type[_Health]],
) -> None:
    port, handler = health_server
    healthcheck = dockerfile().last("HEALTHCHECK")
    argv = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert argv[0] == "python"  # no curl in slim images

    def run() -> int:
        env = {"MODELREG_PORT": str(port), "PATH": "/usr/bin:/bin"}
        return subprocess.run(
            [sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30, check=False
        ).returncode

    assert run() == 0
    assert handler.paths == ["/health/live"]
    handler.status = 503
    assert run() != 0
    assert "/health/live" in {r.path for r in health_router.routes}
