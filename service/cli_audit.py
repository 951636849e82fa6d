"""``modelreg audit``: follow the published events live, or mirror them to a verified file.

    modelreg audit follow [--format table|json] [--since POSITION | --from-start] [--type T]...
    modelreg audit mirror FILE [--once]

Both read NATS only (``MODELREG_NATS_URL``, stream and prefix from the usual settings), so
an auditor needs no database access. Exit codes: 0 stopped by Ctrl-C/SIGTERM or done
(``--once``), 1 the hash chain broke (the message names the log position), 2 cannot start
(NATS unreachable, bad setting).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

import nats
import nats.errors
import typer
from nats.aio.client import Client as NatsClient

from service.audit_follow import ChainError, Mirror, Published, encode_record, follow, record_of
from service.settings import Settings, SettingsError, load_settings

T = TypeVar("T")

app = typer.Typer(
    name="audit",
    help="Follow the registry's published events, or mirror them to a verified JSON-lines file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Format(StrEnum):
    table = "table"
    json = "json"


NatsUrlOption = Annotated[str | None, typer.Option("--nats-url", help="NATS to read from (env MODELREG_NATS_URL).")]
StreamOption = Annotated[str | None, typer.Option("--stream", help="JetStream stream (env MODELREG_NATS_STREAM).")]


@app.command("follow")
def follow_command(
    output: Annotated[Format, typer.Option("--format", help="table for people, json for one JSON object per line.")] = Format.table,
    since: Annotated[int | None, typer.Option(help="Start after this log position (default: only new events).")] = None,
    from_start: Annotated[bool, typer.Option("--from-start", help="Start with the first event.")] = False,
    event_type: Annotated[list[str] | None, typer.Option("--type", help="Only this event type (repeatable).")] = None,
    nats_url: NatsUrlOption = None,
    stream: StreamOption = None,
) -> None:
    """Print events as the registry publishes them, until Ctrl-C."""
    settings = _settings()
    start = 0 if from_start else since

    async def run(stop: asyncio.Event) -> None:
        client = await _connect(nats_url or _default_url(settings))
        try:
            if output is Format.table:
                _print(f"{'POSITION':>10}  {'OCCURRED AT':<27}  {'TYPE':<34}  {'SUBJECT':<30}  ACTOR")
            async for event in follow(client, stream=stream or settings.nats_stream,
                                      subject_prefix=settings.nats_subject_prefix, since=start,
                                      event_types=event_type or (), stop=stop):
                _print(_table_row(event) if output is Format.table else encode_record(record_of(event)).decode().rstrip("\n"))
        finally:
            await client.close()

    _main(run)


@app.command("mirror")
def mirror_command(
    file: Annotated[Path, typer.Argument(help="The JSON-lines file to append to (created if missing).")],
    once: Annotated[bool, typer.Option("--once", help="Stop when caught up instead of following.")] = False,
    nats_url: NatsUrlOption = None,
    stream: StreamOption = None,
) -> None:
    """Append every event to FILE, verifying the hash chains; resume where it stopped."""
    settings = _settings()

    async def run(stop: asyncio.Event) -> None:
        mirror = Mirror(file)
        client = await _connect(nats_url or _default_url(settings))
        try:
            appended = await mirror.run(client, stream=stream or settings.nats_stream, stop=stop,
                                        until_caught_up=once)
        finally:
            await client.close()
        typer.echo(f"mirrored {appended} new events; {file} verified through log position "
                   f"{mirror.verifier.log_position}", err=True)

    _main(run)


def _table_row(event: Published) -> str:
    envelope = event.envelope
    return (f"{event.event.log_position:>10}  {event.event.time.isoformat():<27}  {event.event.type:<34}  "
            f"{event.event.subject:<30}  {envelope.actor}")


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        typer.echo(f"modelreg: {exc}", err=True)
        raise typer.Exit(2) from None


def _default_url(settings: Settings) -> str:
    return settings.nats_url or f"nats://127.0.0.1:{settings.nats_port}"


async def _connect(url: str) -> NatsClient:
    async def quiet(exc: Exception) -> None:
        return None

    try:
        client: NatsClient = await asyncio.wait_for(
            nats.connect(url, connect_timeout=3, max_reconnect_attempts=1, reconnect_time_wait=0.5, error_cb=quiet),
            timeout=10,
        )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise _CannotStartError(f"cannot connect to NATS at {url}: {str(exc) or type(exc).__name__}") from None
    # Give up quickly on a server that never answered, but once connected reconnect
    # forever: a follower outlives NATS restarts. (nats-py reads this on every reconnect.)
    client.options["max_reconnect_attempts"] = -1
    return client


class _CannotStartError(RuntimeError):
    """NATS is unreachable or a setting is wrong: one line, exit code 2."""


def _main(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run until done or until SIGINT/SIGTERM; map failures to exit codes."""

    async def supervised() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        work = asyncio.ensure_future(run(stop))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            # Give the reader a moment to finish its current message, then stop it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(work), 3)
            work.cancel()
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work

    try:
        asyncio.run(supervised())
    except ChainError as exc:
        typer.echo(f"modelreg audit: chain broken at {exc}", err=True)
        raise typer.Exit(1) from None
    except _CannotStartError as exc:
        typer.echo(f"modelreg audit: {exc}", err=True)
        raise typer.Exit(2) from None
