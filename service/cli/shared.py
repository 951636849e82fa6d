"""What the client-side commands share (options, output, exit codes), and the top-level
ones: ``whoami``, ``stage``, ``promote``, ``approve``, ``reject``, ``history``. I/O: the
terminal and the registry's HTTP API, through ``service.client``.

Every client command reads ``--url``/``MODELREG_URL`` (default http://127.0.0.1:8000) and
``--token``/``MODELREG_TOKEN``, prints a table (or a short sentence) for people and, with
``--json``, one JSON document on stdout for machines (JSON lines for streams). Exit codes:

    0  done (a move that now waits for approval is done too: it opened a request)
    1  the registry refused the request (4xx): the problem's title, detail, field and rule on stderr
    2  usage or configuration error (bad option, no token, unreadable file)
    3  the registry is unreachable, or failed (5xx, or still busy after every retry)
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import msgspec
import typer
from rich import box
from rich.console import Console
from rich.table import Table

from events.stages import Stage
from service.client import Client, ConfigurationError, ManifestError, ModelregError, RetryPolicy
from service.client.models import AuditEntry, Receipt

P = ParamSpec("P")
R = TypeVar("R")

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

# ---------------------------------------------------------------- options


def complete_model(incomplete: str) -> list[str]:
    """Shell completion of model names: a quick search, silent on any failure."""
    try:
        with Client(timeout=2.0, retry=RetryPolicy(attempts=1), read_your_writes=False) as client:
            page = client.list_models(f"{incomplete}*" if incomplete else None, limit=50)
    except Exception:  # noqa: BLE001 - completion must never print a traceback into a shell
        return []
    return [m.name for m in page.items]


UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="MODELREG_URL",
        show_envvar=True,
        help="The registry (default http://127.0.0.1:8000).",
        rich_help_panel="Connection",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="MODELREG_TOKEN",
        show_envvar=True,
        show_default=False,
        help="Bearer token.",
        rich_help_panel="Connection",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON for machines instead of a table.")
]
ModelArg = Annotated[
    str, typer.Argument(help="Model name.", autocompletion=complete_model, show_default=False)
]
VersionArg = Annotated[int, typer.Argument(help="Version number.", min=1, show_default=False)]
CommentOption = Annotated[
    str, typer.Option("--comment", "-m", help="Why (recorded in the audit log).")
]


# ---------------------------------------------------------------- errors and exit codes


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    typer.echo(f"modelreg: {message}", err=True)
    raise typer.Exit(code)


def exit_code(error: ModelregError) -> int:
    return EXIT_REFUSED if error.refused else EXIT_UNAVAILABLE


def report(error: ModelregError, as_json: bool) -> None:
    """The problem on stderr: one JSON line with ``--json``, else a few lines for people."""
    if as_json:
        document = error.problem or {
            "title": str(error),
            "status": error.status,
            "code": error.code or "unreachable",
        }
        sys.stderr.write(msgspec.json.encode(document).decode() + "\n")
        return
    lines = [f"modelreg: {error}"]
    where = "  ".join(f"{k}: {v}" for k, v in (("field", error.field), ("rule", error.rule)) if v)
    if where:
        lines.append(f"  {where}")
    lines.extend(f"  {e.get('field', '?')}: {e.get('message', '')}" for e in error.errors[1:])
    lines.extend(
        f"  {k}: {v}" for k, v in error.details.items() if k in {"permission", "scope", "head"}
    )
    sys.stderr.write("\n".join(lines) + "\n")


def client_command(command: Callable[P, R]) -> Callable[P, R]:
    """Map what can go wrong to one stderr message and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        as_json = bool(kwargs.get("as_json", False))
        try:
            return command(*args, **kwargs)
        except ModelregError as exc:
            report(exc, as_json)
            raise typer.Exit(exit_code(exc)) from None
        except (ConfigurationError, ManifestError) as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))

    return wrapper


def connect(url: str | None, token: str | None, **options: Any) -> Client:
    try:
        return Client(url, token, **options)
    except ConfigurationError as exc:
        fail(
            str(exc).replace(
                "pass token=... or set MODELREG_TOKEN", "set MODELREG_TOKEN or pass --token"
            )
        )


# ---------------------------------------------------------------- output


def console(stderr: bool = False) -> Console:
    """Rich output, plain text when piped; never wrapped at 80 columns when not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 200
    return Console(file=stream, width=width, markup=False, highlight=False, emoji=False)


def table(*headers: str, title: str | None = None) -> Table:
    return Table(
        *headers,
        box=box.SIMPLE_HEAD,
        title=title,
        title_justify="left",
        header_style="bold",
        pad_edge=False,
        show_edge=False,
    )


def show(renderable: Any) -> None:
    console().print(renderable)


def say(text: str) -> None:
    """A sentence for people (stdout)."""
    console().print(text, soft_wrap=True)


def emit_json(value: Any) -> None:
    """One JSON document, indented."""
    sys.stdout.write(
        msgspec.json.format(msgspec.json.encode(value, enc_hook=_enc), indent=2).decode() + "\n"
    )


def emit_json_line(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value, enc_hook=_enc).decode() + "\n")
    sys.stdout.flush()


def _enc(value: Any) -> Any:
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def when(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def receipt_line(receipt: Receipt) -> str:
    where = f"log position {receipt.position}" if receipt.position is not None else "not yet sealed"
    return f"{', '.join(receipt.events) or 'no change'} ({where})"


# ---------------------------------------------------------------- parsing


_KEY_VALUE = re.compile(r"^([^=]+)=(.*)$", re.DOTALL)


def key_values(items: Iterable[str] | None, what: str = "KEY=VALUE") -> dict[str, str]:
    found: dict[str, str] = {}
    for item in items or []:
        match = _KEY_VALUE.match(item)
        if not match:
            raise typer.BadParameter(f"{item!r} is not {what}")
        found[match.group(1).strip()] = match.group(2)
    return found


def scalar(text: str) -> str | int | float | bool:
    """``10`` -> 10, ``0.1`` -> 0.1, ``true`` -> True, anything else stays text."""
    lowered = text.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


_DURATION = re.compile(r"(\d+)([dhm])")


def parse_duration(text: str) -> timedelta | None:
    """``30d``, ``12h``, ``45m`` (None when ``text`` is not one)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        return None
    amount, unit = int(match.group(1)), match.group(2)
    return {
        "d": timedelta(days=amount),
        "h": timedelta(hours=amount),
        "m": timedelta(minutes=amount),
    }[unit]


def parse_time(text: str | None, option: str) -> datetime | None:
    """RFC 3339 (``2026-03-03T14:03:00Z``; no zone: UTC), or ``30d``/``12h``/``45m`` ago."""
    if text is None:
        return None
    ago = parse_duration(text)
    if ago is not None:
        return datetime.now(UTC) - ago
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a time like 2026-03-03T14:03:00Z or 7d", param_hint=option
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# ---------------------------------------------------------------- whoami


@client_command
def whoami(url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Who the token belongs to, and what it may do.

    Example: modelreg whoami --json | jq -r .name
    """
    with connect(url, token) as client:
        me = client.whoami()
        if as_json:
            emit_json(
                {
                    "url": client.url,
                    **msgspec.structs.asdict(me),
                    "permissions": sorted(me.permissions),
                }
            )
            return
        grid = table("", "", title=None)
        grid.show_header = False
        grid.add_row("principal", me.name)
        grid.add_row("token", me.token_id)
        grid.add_row("roles", ", ".join(me.roles))
        grid.add_row("permissions", ", ".join(sorted(me.permissions)))
        grid.add_row("scopes", ", ".join(me.scopes) or "every model")
        grid.add_row("registry", client.url)
        show(grid)


# ---------------------------------------------------------------- governed moves


def _moved(client: Client, receipt: Receipt, what: str) -> None:
    if receipt.pending:
        say(
            f"{what}: needs approval; opened promotion request {receipt.request_id}\n"
            f"  approve with: modelreg approve {receipt.request_id}"
        )
    else:
        say(f"{what}: done; {receipt_line(receipt)}")


@client_command
def stage(
    model: ModelArg,
    version: VersionArg,
    to: Annotated[Stage, typer.Argument(help="Target stage.", show_default=False)],
    comment: CommentOption = "",
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move a version to a stage; when the policy needs approval, open a promotion request.

    Examples:

        modelreg stage churn 3 staging

        modelreg stage churn 3 production -m "beats v2 on holdout auc"
    """
    with connect(url, token) as client:
        receipt = client.transition(model, version, to, comment=comment)
        if as_json:
            emit_json(receipt)
        else:
            _moved(client, receipt, f"{model} v{version} -> {to}")


@client_command
def promote(
    model: ModelArg,
    version: VersionArg,
    justification: Annotated[
        str, typer.Option("--justification", "-m", help="Why (required).", show_default=False)
    ],
    to: Annotated[Stage | None, typer.Option("--to", help="Target stage.")] = None,
    alias: Annotated[
        str | None, typer.Option("--alias", help="Alias to point at the version.")
    ] = None,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="A rollback (the policy may need fewer approvals).")
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Request a promotion (a stage and/or an alias); runs at once if no approval is needed.

    Examples:

        modelreg promote churn 3 --to production -m "auc 0.95 on holdout"

        modelreg promote churn 3 --alias champion -m "best auc"
    """
    if to is None and alias is None:
        raise typer.BadParameter("name a target: --to STAGE and/or --alias ALIAS")
    with connect(url, token) as client:
        receipt = client.request_promotion(
            model, version, justification=justification, stage=to, alias=alias, rollback=rollback
        )
        if as_json:
            emit_json(receipt)
        else:
            target = " and ".join(
                t for t in (str(to) if to else "", f"alias {alias}" if alias else "") if t
            )
            _moved(client, receipt, f"{model} v{version} -> {target}")


RequestArg = Annotated[
    str,
    typer.Argument(
        help="Promotion request id (shown by promote, stage, promotions list).", show_default=False
    ),
]


@client_command
def approve(
    request_id: RequestArg,
    comment: CommentOption = "",
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Approve a promotion request; the approval that satisfies the policy executes it.

    Example: modelreg approve 5f0c... -m "checked the holdout report"
    """
    with connect(url, token) as client:
        receipt = client.approve(request_id, comment)
        if as_json:
            emit_json(receipt)
        elif receipt.executed:
            say(
                f"approved; promotion executed: {receipt.model} v{receipt.version} ({receipt_line(receipt)})"
            )
        else:
            say(f"approved; the request still needs more approvals ({receipt_line(receipt)})")


@client_command
def reject(
    request_id: RequestArg,
    comment: CommentOption = "",
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Reject a promotion request.

    Example: modelreg reject 5f0c... -m "latency regression"
    """
    with connect(url, token) as client:
        receipt = client.reject(request_id, comment)
        if as_json:
            emit_json(receipt)
        else:
            say(f"rejected: {receipt.model} v{receipt.version} ({receipt_line(receipt)})")


# ---------------------------------------------------------------- history


def audit_table(entries: Iterable[AuditEntry], title: str | None = None) -> Table:
    grid = table("position", "time (UTC)", "actor", "event", "version", "summary", title=title)
    for e in entries:
        summary = e.summary + (f" - {e.reason}" if e.reason and e.reason not in e.summary else "")
        grid.add_row(
            str(e.log_position),
            when(e.occurred_at),
            e.actor,
            e.event_type.removeprefix("model."),
            "" if e.version is None else str(e.version),
            summary,
        )
    return grid


@client_command
def history(
    model: ModelArg,
    version: Annotated[
        int | None, typer.Option("--version", "-v", help="Only events about this version.")
    ] = None,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Only events by this principal.")
    ] = None,
    event_type: Annotated[
        list[str] | None, typer.Option("--type", help="Only this event type (repeatable).")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="RFC 3339 time, or 7d / 12h / 30m ago.")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="RFC 3339 time, or 7d / 12h / 30m ago.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=1000, help="At most this many events.")
    ] = 50,
    oldest_first: Annotated[
        bool, typer.Option("--oldest-first", help="Chronological order.")
    ] = False,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Only what was recorded up to a log position or time."),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every event of a model: who did what, when and why (newest first).

    Examples:

        modelreg history churn -n 20

        modelreg history churn --version 3 --type model.stage_transitioned --json
    """
    types = [t if "." in t else f"model.{t}" for t in event_type or []]
    with connect(url, token) as client:
        page = client.history(
            model,
            actor=actor,
            types=types,
            version=version,
            since=parse_time(since, "--since"),
            until=parse_time(until, "--until"),
            limit=limit,
            oldest_first=oldest_first,
            as_of=as_of,
        )
        if as_json:
            emit_json(page)
            return
        show(audit_table(page.items))
        if page.next_cursor is not None:
            console(stderr=True).print(f"(more: raise --limit; next cursor {page.next_cursor})")


def print_mapping(title: str, values: Mapping[str, Any]) -> None:
    grid = table("", "", title=title)
    grid.show_header = False
    for key, value in values.items():
        if value not in (None, ""):
            grid.add_row(key, str(value))
    show(grid)
