"""``modelreg alias``: point an alias at a version, remove it, show where it pointed.
I/O: the registry's HTTP API; exit codes as in ``service.cli.shared``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from service.cli.help import command_group
from service.cli.output import output, table, when
from service.cli.shared import (
    CommentOption,
    JsonOption,
    ModelArg,
    TokenOption,
    UrlOption,
    VersionArg,
    client_command,
    connect,
    receipt_line,
)
from service.client.models import AliasInterval

app = command_group("Aliases (champion, challenger, ...): set, rm, history.")

AliasArg = Annotated[
    str, typer.Argument(help="Alias: lower-case letters, digits, '_', '-'.", show_default=False)
]


@app.command("set")
@client_command
def set_alias(
    model: ModelArg,
    alias: AliasArg,
    version: VersionArg,
    comment: CommentOption = "",
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Point an alias at a version (a protected alias moves only through `modelreg promote --alias`).

    Example: modelreg alias set churn challenger 4 -m "A/B from Monday"
    """
    with connect(url, token) as client:
        receipt = client.set_alias(model, alias, version, comment=comment)
    output(receipt, as_json, lambda r: f"{model}: {alias} -> v{version}: {receipt_line(r)}")


@app.command("rm")
@client_command
def remove_alias(
    model: ModelArg,
    alias: AliasArg,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove an alias.

    Example: modelreg alias rm churn challenger
    """
    with connect(url, token) as client:
        receipt = client.remove_alias(model, alias)
    output(receipt, as_json, lambda r: f"{model}: removed {alias}: {receipt_line(r)}")


@app.command("history")
@client_command
def alias_history(
    model: ModelArg,
    alias: AliasArg,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every version the alias pointed at, from when to when.

    Example: modelreg alias history churn champion
    """
    with connect(url, token) as client:
        found = client.alias_history(model, alias)
    output(found, as_json, _intervals)


def _intervals(found: list[AliasInterval]) -> Table:
    grid = table("version", "from (UTC)", "until (UTC)", "set by", "how", "comment")
    for i in found:
        grid.add_row(
            f"v{i.version}",
            when(i.from_time),
            when(i.to_time) or "now",
            i.entered_by,
            i.kind,
            i.comment,
        )
    return grid
