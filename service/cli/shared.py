"""What the client-side commands share: options, errors and exit codes, parsing. I/O: the
terminal (stderr), and the registry's HTTP API through ``service.client``.

Every client command reads ``--url``/``MODELREG_URL`` (default http://127.0.0.1:8000) and
``--token``/``MODELREG_TOKEN``, and prints its answer through ``service.cli.output``: a
table (or a short sentence) for people and, with ``--json``, one JSON document on stdout
for machines (JSON lines for streams). Exit codes:

    0  done (a move that now waits for approval is done too: it opened a request)
    1  the registry refused the request (4xx): the problem's title, detail, field and rule on stderr
    2  usage or configuration error (bad option, no token, unreadable file)
    3  the registry is unreachable, or failed (5xx, or still busy after every retry)
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import msgspec
import typer

from events.stages import Stage
from service.client import Client, ConfigurationError, ManifestError, ModelregError, RetryPolicy
from service.client.models import Receipt

P = ParamSpec("P")
R = TypeVar("R")

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

STAGE_NAMES = (
    "a stage the model's policy defines (by default " + ", ".join(s.value for s in Stage) + ")"
)

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
EnvOption = Annotated[
    str | None,
    typer.Option(
        "--env",
        help="The environment of the stage (required for a stage with environments, e.g. eu).",
    ),
]
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


# Each command is a process of its own, with no position of the last command's write to
# pass to its reads: every read asks for the registry as recorded when it came instead, so
# `models create` then `models list` lists the model (the API's Modelreg-Consistency).
READ_LATEST = {"Modelreg-Consistency": "latest"}


def connect(url: str | None, token: str | None, **options: Any) -> Client:
    options["headers"] = {**READ_LATEST, **options.get("headers", {})}
    try:
        return Client(url, token, **options)
    except ConfigurationError as exc:
        fail(
            str(exc).replace(
                "pass token=... or set MODELREG_TOKEN", "set MODELREG_TOKEN or pass --token"
            )
        )


# ---------------------------------------------------------------- answers


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
