"""``modelreg service-accounts``: principals for CI whose tokens must expire (admin). I/O:
the registry's HTTP API. Tokens of an account: ``modelreg tokens issue --service-account``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from events.access import Role
from service.cli.help import command_group
from service.cli.output import output, table
from service.cli.shared import (
    JsonOption,
    TokenOption,
    UrlOption,
    client_command,
    connect,
    parse_duration,
    receipt_line,
)
from service.client.models import ServiceAccountInfo

app = command_group("Service accounts for CI (admin): create, list, disable.")


@app.command("create")
@client_command
def create(
    name: Annotated[str, typer.Argument(help="The account's name.", show_default=False)],
    role: Annotated[
        list[Role],
        typer.Option(
            "--role", "-r", help="The roles its tokens carry (repeatable).", show_default=False
        ),
    ],
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help="Only these models; 'churn*' for a prefix (repeatable)."),
    ] = None,
    max_lifetime: Annotated[
        str, typer.Option("--max-lifetime", help="Longest a token may live: 30d, 12h (<= 365d).")
    ] = "90d",
    description: Annotated[str, typer.Option("--description", "-d", help="What it is for.")] = "",
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a service account.

    Example: modelreg service-accounts create ci-bot -r contributor --scope 'churn*' --max-lifetime 30d
    """
    lifetime = parse_duration(max_lifetime)
    if lifetime is None:
        raise typer.BadParameter(
            f"{max_lifetime!r} is not a duration like 30d or 12h", param_hint="--max-lifetime"
        )
    with connect(url, token) as client:
        receipt = client.create_service_account(
            name, role, scopes=scope or (), max_lifetime=lifetime, description=description
        )
    output(receipt, as_json, lambda r: f"service account {name}: {receipt_line(r)}")


@app.command("list")
@client_command
def list_accounts(
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Every service account: roles, scopes, maximum token lifetime, disabled.

    Example: modelreg service-accounts list --json
    """
    with connect(url, token) as client:
        found = client.list_service_accounts()
    output(found, as_json, _accounts)


def _accounts(found: list[ServiceAccountInfo]) -> Table:
    grid = table("account", "roles", "scopes", "max lifetime", "disabled", "description")
    for a in found:
        grid.add_row(
            a.name,
            ", ".join(a.roles),
            ", ".join(a.scopes) or "*",
            f"{a.max_lifetime_seconds // 86400}d {a.max_lifetime_seconds % 86400 // 3600}h",
            a.disabled_reason or "yes" if a.disabled else "",
            a.description,
        )
    return grid


@app.command("disable")
@client_command
def disable(
    name: Annotated[str, typer.Argument(help="The account's name.", show_default=False)],
    reason: Annotated[str, typer.Option("--reason", "-m", help="Why (recorded).")] = "",
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Disable a service account: all its tokens stop working at once.

    Example: modelreg service-accounts disable ci-bot -m "pipeline retired"
    """
    with connect(url, token) as client:
        receipt = client.disable_service_account(name, reason)
    output(receipt, as_json, lambda r: f"service account {name}: {receipt_line(r)}")
