"""``modelreg events``: the registry's global log over HTTP (for people; auditors who
need every event with verified chains use ``modelreg audit``, which reads NATS).
I/O: the registry's HTTP API; exit codes as in ``service.cli.shared`` (Ctrl-C: 0)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from events.catalogue import ALL_EVENT_TYPES
from events.subjects import is_subject_id
from service.cli.help import command_group
from service.cli.output import OutputClosedError, RowStream, StreamOutput, when
from service.cli.shared import (
    JsonOption,
    TokenOption,
    UrlOption,
    client_command,
    complete_model,
    connect,
)
from service.client import Client, NotFound
from service.client.models import LoggedEvent

app = command_group("The global event log: tail (and follow) it.")

TYPE_WIDTH = max(len(t.event_type) for t in ALL_EVENT_TYPES)


def event_rows() -> RowStream:
    """The columns of the log as a table: the widest event type fits; a long stream id or
    actor folds within its column."""
    return RowStream(
        ("position", 8),
        ("sealed at (UTC)", 19),
        ("type", TYPE_WIDTH),
        ("stream", 44),
        ("actor", None),
        right=("position",),
    )


def cells_of(event: LoggedEvent, name: Callable[[str], str] = str) -> tuple[str, ...]:
    """``name``: who an actor is (the envelope records people by subject id)."""
    record = event.record
    return (
        str(event.log_position),
        when(event.sealed_at),
        str(record.get("event_type", "")),
        str(record.get("stream_id", "")),
        name(str(record.get("actor", ""))),
    )


def names_from(client: Client) -> Callable[[str], str]:
    """Subject ids as people read them (asked once each); anything else as it is."""
    known: dict[str, str] = {}

    def name(actor: str) -> str:
        if not is_subject_id(actor):
            return actor
        if actor not in known:
            try:
                known[actor] = client.subject(actor).display
            except NotFound:
                known[actor] = actor
        return known[actor]

    return name


def json_of(event: LoggedEvent) -> dict[str, object]:
    return {
        "log_position": event.log_position,
        "sealed_at": event.sealed_at,
        "envelope": event.envelope,
    }


@app.command("tail")
@client_command
def tail(
    lines: Annotated[
        int,
        typer.Option("--lines", "-n", min=0, help="Start this many log positions before the end."),
    ] = 10,
    after: Annotated[
        int | None, typer.Option("--after", min=0, help="Start after this log position instead.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")
    ] = False,
    event_type: Annotated[
        list[str] | None, typer.Option("--type", help="Only this event type (repeatable).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Only this model's events.", autocompletion=complete_model),
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between polls with --follow.")
    ] = 1.0,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """The latest events of the log; with --follow, new ones as they are sealed.

    With --json, one JSON object per line: log_position, sealed_at and the stored
    envelope (event_type, stream_id, actor, occurred_at, data, ...).

    Examples:

        modelreg events tail -n 20

        modelreg events tail -f --model churn --json | jq -c '.envelope | {event_type, actor}'
    """

    stream = StreamOutput(as_json, event_rows())

    with connect(url, token, read_your_writes=False) as client:
        name = names_from(client)

        def emit(event: LoggedEvent) -> None:
            stream.emit(json_of(event), () if as_json else cells_of(event, name))

        start = after if after is not None else max(0, client.head_position() - lines)
        stream.start()
        try:
            if follow:
                for event in client.follow_events(
                    start, types=event_type, model=model, poll_interval=interval
                ):
                    emit(event)
            else:
                position = start
                while True:
                    page = client.events(position, limit=500, types=event_type, model=model)
                    for event in page.items:
                        emit(event)
                        position = event.log_position
                    if page.next_after is None:
                        break
        except (KeyboardInterrupt, OutputClosedError):
            return
