"""Running the CLI in-process against a test server, as a shell would."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner, Result

from service.cli.main import build
from tests.support.registry_server import RegistryServer

APP = build()


def run(server: RegistryServer, *args: str, token: str | None = None, code: int = 0) -> Result:
    """``modelreg ARGS`` against ``server`` (its admin token unless ``token``); the exit code
    must be ``code``, or the failure shows both streams."""
    env = server.env(COLUMNS="200", MODELREG_RETRIES="2")
    if token is not None:
        env["MODELREG_TOKEN"] = token
    result = CliRunner().invoke(APP, list(args), env=env)
    assert result.exit_code == code, (
        f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)
