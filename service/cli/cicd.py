"""Pipeline steps: ``modelreg gate check`` and ``modelreg wait``. I/O: the registry's HTTP API.

Exit codes (docs/ci-cd.md), besides those of ``service.cli.shared`` (2 usage, 3 unreachable):

    gate check   0 the move would pass (directly, or as a request awaiting approval);
                 1 it would be refused: the reason on stderr (with --json, the check on stdout)
    wait         0 the condition holds; 1 the promotion it waits for was rejected, cancelled
                 or expired, or the model/version does not exist; 4 timed out
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

import typer

from events.errors import ValidationError
from events.names import validate_stage_name
from service.cli.help import command_group
from service.cli.output import emit_json, note, output
from service.cli.shared import (
    STAGE_NAMES,
    EnvOption,
    JsonOption,
    ModelArg,
    TokenOption,
    UrlOption,
    VersionArg,
    client_command,
    connect,
    fail,
)
from service.client import Client

EXIT_REFUSED = 1
EXIT_TIMEOUT = 4

app = command_group("CI/CD gates: would a move pass the policy and its metric gates now?")

_SECONDS = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ENDED = {"rejected", "cancelled", "expired"}


def seconds(text: str, option: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d`` in seconds."""
    match = _SECONDS.fullmatch(text.strip())
    if match is None:
        raise typer.BadParameter(
            f"{text!r} is not a duration like 30s, 10m or 2h", param_hint=option
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


@app.command("check")
@client_command
def check(
    model: ModelArg,
    version: VersionArg,
    to: Annotated[
        str,
        typer.Option("--to", help=f"The stage to move to: {STAGE_NAMES}.", show_default=False),
    ],
    env: EnvOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Exit 0 when moving the version would pass the policy and its gates; 1 with the reason.

    A dry run: nothing is recorded. A move that needs approvals passes (it would open a
    request); the output says so.

    Example: modelreg gate check churn 7 --to production
    """
    with connect(url, token) as client:
        found = client.gate_check(model, version, to, environment=env)
    if as_json:
        emit_json(found)
    if not found["passes"]:
        if not as_json:
            fail(
                f"{model} v{version}: {found['from_stage']} -> {found['to_stage']} would be"
                f" refused: {found['reason']} ({found['code']})",
                EXIT_REFUSED,
            )
        raise typer.Exit(EXIT_REFUSED)
    if not as_json:
        output(found, False, _passed)


def _passed(found: dict[str, Any]) -> str:
    how = (
        "directly"
        if found["outcome"] == "direct"
        else f"as a request needing {found['approvals_required']} approval(s)"
    )
    return (
        f"{found['model']} v{found['version']}: {found['from_stage']} -> {found['to_stage']}"
        f" passes the policy and its gates ({how})"
    )


@client_command
def wait(
    model: ModelArg,
    version: VersionArg,
    condition: Annotated[
        str,
        typer.Option("--for", help="stage=NAME or alias=NAME: what must hold.", show_default=False),
    ],
    timeout: Annotated[str, typer.Option("--timeout", help="e.g. 90s, 10m, 2h.")] = "10m",
    interval: Annotated[str, typer.Option("--interval", help="Between checks.")] = "2s",
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Block until a version is in a stage (or holds an alias); exit 0 then, 4 on timeout,
    1 when the promotion it waits for is rejected, cancelled or expires.

    Example: modelreg wait churn 7 --for stage=production --timeout 10m
    """
    kind, _, wanted = condition.partition("=")
    if kind not in ("stage", "alias") or not wanted:
        raise typer.BadParameter("stage=NAME or alias=NAME", param_hint="--for")
    if kind == "stage":
        try:
            validate_stage_name(wanted)
        except ValidationError as exc:
            raise typer.BadParameter(str(exc), param_hint="--for") from None
    deadline = time.monotonic() + seconds(timeout, "--timeout")
    pause = seconds(interval, "--interval")
    with connect(url, token, read_your_writes=False) as client:
        while True:
            row = client.get_version(model, version)
            holds = row.stage == wanted if kind == "stage" else wanted in row.aliases
            if holds:
                result = {"model": model, "version": version, kind: wanted, "holds": True}
                output(result, as_json, lambda _: f"{model} v{version}: {condition} holds")
                return
            ended = _ended_request(client, model, version, kind, wanted)
            if ended is not None:
                fail(
                    f"{model} v{version}: the promotion request {ended['request_id']} was"
                    f" {ended['status']}"
                    + (f": {ended['decision_comment']}" if ended.get("decision_comment") else ""),
                    EXIT_REFUSED,
                )
            if time.monotonic() + pause > deadline:
                note(f"{model} v{version}: {condition} did not hold within {timeout}")
                raise typer.Exit(EXIT_TIMEOUT)
            time.sleep(pause)


def _ended_request(
    client: Client, model: str, version: int, kind: str, wanted: str
) -> dict[str, Any] | None:
    """The last request for this move, when it ended without the move (rejected, cancelled,
    expired) and no other request for the same move is open: nothing more can make it hold."""

    def same_move(request: Any) -> bool:
        target = request.target_stage if kind == "stage" else request.alias
        return bool(request.version == version and target == wanted)

    if any(same_move(r) for r in client.list_promotions("open", model=model)):
        return None
    decided = [r for r in client.list_promotions("decided", model=model) if same_move(r)]
    if not decided:
        return None
    last = max(decided, key=lambda r: r.decided_position or 0)
    if last.status not in _ENDED:
        return None
    return {
        "request_id": last.request_id,
        "status": last.status,
        "decision_comment": last.decision_comment,
    }
