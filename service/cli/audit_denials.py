"""``modelreg audit denials``: the refused requests, newest first (admin). I/O: the registry's
HTTP API (``GET /api/v1/audit/denials``); exit codes as in ``service.cli.shared``.

    modelreg audit denials [--principal P] [--model M] [--code C] [--since 1d] [--until T]
                           [--limit N] [--json]
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from service.cli.output import output, table, when
from service.cli.shared import (
    JsonOption,
    TokenOption,
    UrlOption,
    client_command,
    connect,
    parse_time,
)
from service.client.models import Denial

CODES = ("unauthenticated", "permission_denied", "policy_violation", "overflow")


@client_command
def denials_command(
    principal: Annotated[
        str | None, typer.Option("--principal", help="Only refusals of this principal.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Only refusals about this model.")
    ] = None,
    code: Annotated[
        str | None,
        typer.Option("--code", help="unauthenticated, permission_denied or policy_violation."),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="RFC 3339 time, or 30d / 12h / 45m ago.")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="RFC 3339 time, or 30d / 12h / 45m ago.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=100_000, help="At most this many rows.")
    ] = 100,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Who was refused what, why and how often (admin): not authenticated, not permitted,
    or refused by the governance policy. Identical refusals within a minute are one row.

    Examples:

        modelreg audit denials --since 1d

        modelreg audit denials --principal ci-bot --json | jq '.[].reason'
    """
    if code is not None and code not in CODES:
        raise typer.BadParameter(
            f"{code!r}: expected one of {', '.join(CODES)}", param_hint="--code"
        )
    filters = {
        "principal": principal,
        "model": model,
        "code": code,
        "since": parse_time(since, "--since"),
        "until": parse_time(until, "--until"),
        "limit": min(limit, 1000),
    }
    found: list[Denial] = []
    with connect(url, token) as client:
        for denial in client.all_denials(**filters):
            found.append(denial)
            if len(found) >= limit:
                break
    output(found, as_json, _denials)


def _denials(found: list[Denial]) -> Table:
    grid = table("last (UTC)", "count", "who", "refused", "request", "model", "why")
    for d in found:
        grid.add_row(
            when(d.last_at),
            str(d.count),
            d.principal or "(not authenticated)",
            d.code.replace("_", " ") + (f": {d.permission}" if d.permission else ""),
            f"{d.method} {d.route}".strip(),
            d.model or "",
            d.reason,
        )
    return grid
