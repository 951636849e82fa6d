"""The ``modelreg`` command line (also ``python -m service``). I/O: the terminal.

Exit codes: 0 done (or stopped cleanly by a signal), 2 cannot start, with one line on
stderr saying why (bad setting, port or data dir in use, database unreachable), 130 a
second Ctrl-C forced the stop. Command groups live in ``service/cli/<group>.py`` modules
exposing a ``typer.Typer`` named ``app``; list each in ``GROUPS``. They load only when
invoked, so ``modelreg serve`` does not pay for importing every group; top-level
commands living elsewhere are listed in ``COMMANDS``. ``build()`` assembles the command
line (tests render and run exactly what users get). The client-side commands (models,
versions, metrics, stage, promote, ...) talk to a running registry over HTTP and have
their own exit codes: see ``service/cli/shared.py``.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from service.cli.help import command_group
from service.runtime.embedded import EmbeddedServerError
from service.settings import Settings, SettingsError, load_settings

P = ParamSpec("P")
R = TypeVar("R")

# Command group name -> module holding its ``app``.
GROUPS = {
    "audit": "service.cli.audit",
    "projections": "service.cli.projections",
    "models": "service.cli.models",
    "versions": "service.cli.versions",
    "metrics": "service.cli.metrics",
    "alias": "service.cli.alias",
    "promotions": "service.cli.promotions",
    "events": "service.cli.events",
    "tokens": "service.cli.tokens",
    "access": "service.cli.access",
    "service-accounts": "service.cli.service_accounts",
    "subjects": "service.cli.subjects",
    "webhooks": "service.cli.webhooks",
    "gate": "service.cli.cicd",
    "policy": "service.cli.policy",
}
# Top-level command name -> module holding a function of that name, dashes as underscores
# (loaded like GROUPS).
COMMANDS = {
    "whoami": "service.cli.lifecycle",
    "stage": "service.cli.lifecycle",
    "promote": "service.cli.lifecycle",
    "approve": "service.cli.lifecycle",
    "reject": "service.cli.lifecycle",
    "history": "service.cli.lifecycle",
    "deploy-agent": "service.cli.deploy_agent",
    "wait": "service.cli.cicd",
    "login": "service.cli.signin",
    "logout": "service.cli.signin",
}


class Role(StrEnum):
    all = "all"
    api = "api"
    worker = "worker"


DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Where embedded Postgres/NATS keep data (env MODELREG_DATA_DIR)."
    ),
]


def one_line_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the errors a user can fix into one stderr line and exit code 2, no traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (SettingsError, EmbeddedServerError) as exc:
            error: Exception = exc
        except RuntimeError as exc:
            # Imported only now: the runtime pulls in the whole web stack.
            from service.runtime.serve import StartupError

            if not isinstance(exc, StartupError):
                raise
            error = exc
        typer.echo(f"modelreg: {error}", err=True)
        raise typer.Exit(2)

    return wrapper


@one_line_errors
def serve(
    role: Annotated[
        Role | None,
        typer.Option(
            help="all = API + workers; api; worker = workers + health only (env MODELREG_ROLE)."
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Listen address (env MODELREG_HOST, default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="HTTP port (env MODELREG_PORT, default 8000).")
    ] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Run the registry; starts embedded Postgres and NATS when no URL is configured."""
    settings = _settings(role=role.value if role else None, host=host, port=port, data_dir=data_dir)
    from service.runtime.serve import serve as run

    code = run(settings)
    if code:
        raise typer.Exit(code)


@one_line_errors
def migrate(data_dir: DataDirOption = None) -> None:
    """Apply pending database migrations and print their names."""
    settings = _settings(data_dir=data_dir)
    from service.runtime.serve import migrate as run

    applied = run(settings)
    for name in applied:
        typer.echo(name)
    if not applied:
        typer.echo("schema up to date", err=True)


def _settings(
    *,
    role: str | None = None,
    host: str | None = None,
    port: int | None = None,
    data_dir: Path | None = None,
) -> Settings:
    """Environment, then command-line options on top; logging configured from the result."""
    settings = load_settings(
        None, role=role, host=host, port=port, data_dir=str(data_dir) if data_dir else None
    )
    configure_logging(settings.log_level)
    return settings


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # nats-py logs every failed reconnect with a traceback; the runtime reports outages itself.
    logging.getLogger("nats").setLevel(logging.CRITICAL)


def command_function(name: str) -> Callable[..., object]:
    """The function behind top-level command ``name`` (``deploy-agent`` is ``deploy_agent``)."""
    function: Callable[..., object] = getattr(
        importlib.import_module(COMMANDS[name]), name.replace("-", "_")
    )
    return function


def build(first: str | None = None) -> typer.Typer:
    """The command line: ``serve``, ``migrate`` and, when ``first`` (the command about to
    run) is None, every group and command; else only the one it names."""
    app = command_group("An event-sourced model registry.", name="modelreg", add_completion=True)
    app.command()(serve)
    app.command()(migrate)
    for name, module in GROUPS.items():
        if first in (None, name):
            app.add_typer(importlib.import_module(module).app, name=name)
    for name in COMMANDS:
        if first in (None, name):
            app.command(name)(command_function(name))
    return app


def main() -> None:
    # Import a group only when it may run or be listed, so `modelreg serve` stays quick.
    first = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    build(first)()
