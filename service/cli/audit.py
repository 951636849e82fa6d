"""``modelreg audit``: follow the published events, mirror them, verify the store, replay the past.

    modelreg audit follow [--json] [--since POSITION | --from-start] [--type T]...
    modelreg audit mirror FILE [--once]
    modelreg audit verify [--json] [--checkpoints DIR|stream [--public-key FILE]]
    modelreg audit replay --as-of POSITION|TIME [--model NAME] [--json]
    modelreg audit artifacts [--sample N] [--json] [--gc [--grace 7d]]   (service.cli.audit_artifacts)
    modelreg audit denials [--principal P] [--since 1d] [--json]         (service.cli.audit_denials)

``follow`` and ``mirror`` read NATS only, so an auditor needs no database access: the
server named by ``--nats-url``/``MODELREG_NATS_URL``, else the embedded one a running
``modelreg serve`` started under the data dir (``service.cli.nats_connection``); stream
and prefix from the usual settings. Exit codes: 0 stopped by Ctrl-C/SIGTERM or done
(``--once``), 1 the hash chain broke (the message names the log position), 2 cannot
start (no NATS, NATS refused, no stream, bad setting).

``verify`` and ``replay`` run on the server side, against the database
(``MODELREG_DATABASE_URL``, else the embedded Postgres; see ``service.cli.database``). ``verify``
recomputes both hash chains over everything stored (``eventlog.verify``): exit 0 intact, 1
broken (the first break's kind and log position on stderr), 2 cannot start. With
``--checkpoints`` it also proves that the log extends every signed checkpoint, read from
a directory of checkpoint files or (``stream``) from the JetStream checkpoint stream, with
only the public key (``--public-key``, default ``<checkpoint key>.pub``). ``replay``
folds the log up to a position, or up to the last position sealed at a time, and prints
the registry (or one model) as it stood then (``projections.registry_state``): exit 0, 1
no model had that name then, 2 cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, TypeVar

import asyncpg
import msgspec
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.errors import Error as NatsError
from rich.console import Console, Group, RenderableType
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from eventlog.checkpoints import (
    Checkpoint,
    CheckpointError,
    load_public_key,
    public_key_path,
    read_checkpoint_dir,
)
from eventlog.log import head_position
from eventlog.verify import VerifyReport, verify
from events.catalogue import ALL_EVENT_TYPES
from events.streams import model_id_of, name_key
from projections.registry_state import ModelSnapshot, RegistrySnapshot, model_as_of, registry_as_of
from projections.time_travel import resolve_as_of
from service.cli.audit_artifacts import artifacts_command
from service.cli.audit_denials import denials_command
from service.cli.database import Connect, fail, run_with_database
from service.cli.help import command_group
from service.cli.nats_connection import CannotStartError, connect_nats, nats_url, require_stream
from service.cli.output import (
    OutputClosedError,
    RowStream,
    StreamOutput,
    fields,
    output,
    table,
    when,
)
from service.cli.replay_output import (
    model_document,
    model_tables,
    registry_document,
    registry_tables,
)
from service.consumers.audit_follow import (
    ChainError,
    Mirror,
    Published,
    encode_record,
    follow,
    record_of,
)
from service.publication.checkpointer import read_checkpoint_stream
from service.settings import Settings, SettingsError, load_settings

T = TypeVar("T")

app = command_group(
    "Audit: follow or mirror the published events (NATS); verify the store, replay the past (database)."
)

app.command("artifacts")(artifacts_command)
app.command("denials")(denials_command)

NatsUrlOption = Annotated[
    str | None,
    typer.Option(
        "--nats-url",
        help="NATS to read from (env MODELREG_NATS_URL; default: the running `modelreg serve`'s).",
    ),
]
StreamOption = Annotated[
    str | None, typer.Option("--stream", help="JetStream stream (env MODELREG_NATS_STREAM).")
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data dir of the local `modelreg serve` (env MODELREG_DATA_DIR); a URL setting wins.",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON for machines instead of tables.")
]
TYPE_WIDTH = max(len(t.event_type) for t in ALL_EVENT_TYPES)


@app.command("follow")
def follow_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line instead of a table.")
    ] = False,
    since: Annotated[
        int | None, typer.Option(help="Start after this log position (default: only new events).")
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Start with the first event.")
    ] = False,
    event_type: Annotated[
        list[str] | None, typer.Option("--type", help="Only this event type (repeatable).")
    ] = None,
    nats: NatsUrlOption = None,
    stream_name: StreamOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Print events as the registry publishes them, until Ctrl-C.

    Examples:

        modelreg audit follow --from-start

        modelreg audit follow --type model.stage_transitioned --json | jq -c .event.data
    """
    settings = _settings(data_dir)
    start = 0 if from_start else since
    stream = StreamOutput(
        as_json,
        RowStream(
            ("position", 10),
            ("occurred at (UTC)", 19),
            ("type", TYPE_WIDTH),
            ("subject", 44),
            ("actor", None),
            right=("position",),
        ),
    )

    async def run(stop: asyncio.Event) -> None:
        url = nats_url(nats or settings.nats_url, settings.data_dir)
        client = await connect_nats(url)
        try:
            name = stream_name or settings.nats_stream
            await require_stream(client, name, url)
            stream.start()
            async for event in follow(
                client,
                stream=name,
                subject_prefix=settings.nats_subject_prefix,
                since=start,
                event_types=event_type or (),
                stop=stop,
            ):
                # The very bytes of a mirror file's line.
                line = encode_record(record_of(event)).rstrip(b"\n")
                stream.emit(msgspec.Raw(line), _cells(event))
        finally:
            await client.close()

    _main(run)


@app.command("mirror")
def mirror_command(
    file: Annotated[
        Path, typer.Argument(help="The JSON-lines file to append to (created if missing).")
    ],
    once: Annotated[
        bool, typer.Option("--once", help="Stop when caught up instead of following.")
    ] = False,
    nats: NatsUrlOption = None,
    stream: StreamOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Append every event to FILE, verifying the hash chains; resume where it stopped.

    Example: modelreg audit mirror audit.jsonl --once
    """
    settings = _settings(data_dir)

    async def run(stop: asyncio.Event) -> None:
        mirror = Mirror(file)
        url = nats_url(nats or settings.nats_url, settings.data_dir)
        client = await connect_nats(url)
        try:
            name = stream or settings.nats_stream
            await require_stream(client, name, url)
            appended = await mirror.run(client, stream=name, stop=stop, until_caught_up=once)
        finally:
            await client.close()
        typer.echo(
            f"mirrored {appended} new events; {file} verified through log position "
            f"{mirror.verifier.log_position}",
            err=True,
        )

    _main(run)


def _cells(event: Published) -> tuple[str, ...]:
    return (
        str(event.event.log_position),
        when(event.event.time),
        event.event.type,
        event.event.subject,
        event.envelope.actor,
    )


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
    except CannotStartError as exc:
        typer.echo(f"modelreg audit: {exc}", err=True)
        raise typer.Exit(2) from None
    except OutputClosedError:
        return


# ---------------------------------------------------------------- verify and replay (database side)

EXIT_BROKEN = 1
EXIT_NOT_FOUND = 1
_BREAKS_SHOWN = 20


CheckpointsOption = Annotated[
    str | None,
    typer.Option(
        "--checkpoints",
        metavar="DIR|stream",
        help="Also prove the log extends every signed checkpoint: a directory of checkpoint"
        " files, or `stream` for the JetStream checkpoint stream (MODELREG_CHECKPOINT_STREAM).",
    ),
]
PublicKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--public-key",
        help="The checkpoint signer's Ed25519 public key, PEM (default: <checkpoint key>.pub).",
    ),
]


@app.command("verify")
def verify_command(
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
    checkpoints: CheckpointsOption = None,
    public_key: PublicKeyOption = None,
    nats: NatsUrlOption = None,
) -> None:
    """Recompute both hash chains over the whole store and name the first break.

    Examples:

        modelreg audit verify

        modelreg audit verify --checkpoints ./checkpoints --public-key signer.pub
    """
    settings = _settings(data_dir)
    signed: list[Checkpoint] = []
    key = None
    if checkpoints is not None:
        key = _public_key(public_key or public_key_path(settings.checkpoint_key_path))
        signed = _signed_checkpoints(settings, checkpoints, nats)

    async def work(open_connection: Connect) -> VerifyReport:
        conn = await open_connection()
        # Totals for the bars, from small tables (counting the events themselves would read
        # the whole log once more): stream heads sum to the events, the sealer's cursor is
        # the log's length.
        events = await conn.fetchval("SELECT coalesce(sum(version), 0)::bigint FROM streams")
        entries = await conn.fetchval("SELECT last_log_position FROM sealer_state WHERE id = 1")
        with _progress_bar() as bar:
            tasks = {
                "streams": bar.add_task("stream chains", total=max(1, events or 0)),
                "log": bar.add_task("global chain", total=max(1, entries or 0)),
            }
            report = await verify(
                conn,
                progress=lambda phase, rows: bar.update(tasks[phase], completed=rows),
                checkpoints=signed,
                public_key=key,
            )
            for task in tasks.values():
                bar.update(task, completed=bar.tasks[task].total)
        return report

    report = run_with_database(settings, work)
    output(report, as_json, _verified)
    if report.first_break is not None:
        first = report.first_break
        where = (
            f"log position {first.log_position}"
            if first.log_position is not None
            else "no log position"
        )
        typer.echo(
            f"modelreg audit: the chain is broken at {where} ({first.kind}): {first.detail}",
            err=True,
        )
        raise typer.Exit(EXIT_BROKEN)


def _public_key(path: Path) -> Ed25519PublicKey:
    try:
        return load_public_key(path)
    except CheckpointError as exc:
        raise fail(str(exc)) from None


def _signed_checkpoints(
    settings: Settings, source: str, configured_nats: str | None
) -> list[Checkpoint]:
    """The checkpoints to prove against; none at all proves nothing, so that cannot start."""
    try:
        if source == "stream":
            found = asyncio.run(_stream_checkpoints(settings, configured_nats))
            where = f"stream {settings.checkpoint_stream}"
        else:
            found = read_checkpoint_dir(Path(source))
            where = source
    except (CheckpointError, CannotStartError) as exc:
        raise fail(str(exc)) from None
    if not found:
        raise fail(f"no signed checkpoints in {where}: nothing to prove the log against")
    return found


async def _stream_checkpoints(settings: Settings, configured_nats: str | None) -> list[Checkpoint]:
    url = nats_url(configured_nats or settings.nats_url, settings.data_dir)
    client = await connect_nats(url)
    try:
        await require_stream(client, settings.checkpoint_stream, url)
        return await read_checkpoint_stream(client, settings.checkpoint_stream)
    except (NatsError, TimeoutError) as exc:
        raise CannotStartError(
            f"reading stream {settings.checkpoint_stream}: {str(exc) or type(exc).__name__}"
        ) from None
    finally:
        await client.close()


def _verified(report: VerifyReport) -> RenderableType:
    breaks = len(report.breaks)
    summary = {
        "result": "ok" if report.ok else f"BROKEN ({breaks} break{'' if breaks == 1 else 's'})",
        "events checked": f"{report.events_checked:,}",
        "streams checked": f"{report.streams_checked:,}",
        "log entries checked": f"{report.log_entries_checked:,}",
        "head position": f"{report.head_position:,}",
        "head hash": report.head_hash,
    }
    if report.checkpoints_checked:
        summary["signed checkpoints"] = f"{report.checkpoints_checked:,}"
    first = report.first_break
    if first is not None:
        summary["first break"] = f"{first.kind} at log position {_or_dash(first.log_position)}"
        if first.stream_id is not None:
            summary["  stream"] = f"{first.stream_id} position {_or_dash(first.stream_position)}"
        summary["  detail"] = first.detail
    if breaks <= 1:
        return fields(None, summary)
    listed = table(
        "kind",
        "log position",
        "stream",
        "stream position",
        "detail",
        title=f"breaks (first {min(breaks, _BREAKS_SHOWN)})",
    )
    for b in report.breaks[:_BREAKS_SHOWN]:
        listed.add_row(
            b.kind,
            _or_dash(b.log_position),
            b.stream_id or "-",
            _or_dash(b.stream_position),
            b.detail,
        )
    return Group(fields(None, summary), listed)


@app.command("replay")
def replay_command(
    as_of: Annotated[
        str,
        typer.Option(
            "--as-of",
            help="A log position, or an RFC 3339 time with a zone (the log as it stood then).",
            show_default=False,
        ),
    ],
    model: Annotated[
        str | None, typer.Option("--model", help="Only this model (its name now, or then).")
    ] = None,
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
) -> None:
    """Print the registry (or one model) as it stood at a log position or time.

    Examples:

        modelreg audit replay --as-of 1200

        modelreg audit replay --as-of 2026-03-03T14:03:00Z --model churn --json
    """
    at = _parse_as_of(as_of)
    settings = _settings(data_dir)

    async def work(open_connection: Connect) -> RegistrySnapshot | ModelSnapshot | str:
        conn = await open_connection()
        position = min(await resolve_as_of(conn, at), await head_position(conn))
        with _spinner(f"folding the log up to position {position:,}"):
            if model is None:
                return await registry_as_of(conn, position)
            return await _model_named(conn, model, position)

    found = run_with_database(settings, work)
    if isinstance(found, str):
        typer.echo(f"modelreg audit: {found}", err=True)
        raise typer.Exit(EXIT_NOT_FOUND)
    if isinstance(found, RegistrySnapshot):
        output(registry_document(found), as_json, lambda _: registry_tables(found))
    else:
        output(model_document(found), as_json, lambda _: model_tables(found))


def _parse_as_of(text: str) -> int | datetime:
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"--as-of {text!r} is neither a log position nor an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise fail(f"--as-of {text!r} has no zone; add one (Z, +02:00)")
    return moment


async def _model_named(conn: asyncpg.Connection, name: str, position: int) -> ModelSnapshot | str:
    """The model called ``name`` at ``position``: the one holding the name now if it held
    it then, else another that held it then (names move with renames). A message when none."""
    current = await conn.fetchval(
        "SELECT stream_id FROM unique_keys WHERE key = $1", name_key(name)
    )
    # Every model that ever took the name, from its registration or a rename to it.
    rows = await conn.fetch(
        "SELECT DISTINCT stream_id FROM events"
        " WHERE event_type IN ('model.registered', 'model.renamed')"
        " AND (convert_from(envelope, 'UTF8')::jsonb -> 'data' ->> CASE event_type WHEN 'model.registered'"
        " THEN 'name' ELSE 'new_name' END) = $1",
        name,
    )
    candidates = list(dict.fromkeys([s for s in [current, *(r["stream_id"] for r in rows)] if s]))
    for stream_id in candidates:
        snapshot = await model_as_of(conn, model_id_of(stream_id), position)
        if snapshot.model is not None and snapshot.model.name == name:
            return snapshot
    if not candidates:
        return f"no model is or was named {name!r}"
    return f"no model was named {name!r} at log position {position}"


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


# ------------------------------------------------------------ plumbing


def _settings(data_dir: Path | None) -> Settings:
    try:
        return load_settings(None, data_dir=str(data_dir) if data_dir else None)
    except SettingsError as exc:
        raise fail(str(exc)) from None


def _stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def _progress_bar() -> Progress:
    """A bar on stderr when it is a terminal; nothing otherwise (pipes, CI logs)."""
    console = _stderr_console()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        TaskProgressColumn(),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


@contextlib.contextmanager
def _spinner(text: str) -> Iterator[None]:
    """A spinner with the elapsed time while a fold runs, on a terminal: a fold has no
    row count to show, but a big one takes seconds."""
    console = _stderr_console()
    with Progress(
        SpinnerColumn(),
        TextColumn(text),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        progress.add_task(text, total=None)
        yield
