"""``modelreg access``: custom roles, grants, and "who could do what at T" (admin). I/O:
the registry's HTTP API; exit codes as in ``service.cli.shared``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from events.access import Permission
from service.cli.help import command_group
from service.cli.output import output, table
from service.cli.shared import (
    JsonOption,
    TokenOption,
    UrlOption,
    client_command,
    connect,
    receipt_line,
)
from service.client.models import AccessCheck, AccessView, RoleInfo

app = command_group("Custom roles and grants (admin): define, grant, withdraw, check.")

AsOfOption = Annotated[
    str | None,
    typer.Option("--as-of", help="A log position or an RFC 3339 time: as it stood then."),
]


@app.command("roles")
@client_command
def roles(url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """The built-in roles and the custom ones, with their permissions.

    Example: modelreg access roles
    """
    with connect(url, token) as client:
        found = client.list_roles()
    output(found, as_json, _roles)


def _roles(found: list[RoleInfo]) -> Table:
    grid = table("role", "permissions", "built-in", "description")
    for r in found:
        grid.add_row(r.name, ", ".join(r.permissions), "yes" if r.builtin else "", r.description)
    return grid


@app.command("define-role")
@client_command
def define_role(
    name: Annotated[str, typer.Argument(help="The role's name (a-z 0-9 _ -).", show_default=False)],
    permission: Annotated[
        list[Permission],
        typer.Option(
            "--permission",
            "-p",
            help="read, write, approve, admin (repeatable).",
            show_default=False,
        ),
    ],
    description: Annotated[str, typer.Option("--description", "-d", help="What it is for.")] = "",
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Define a custom role, or change its permissions (its grants change at once).

    Example: modelreg access define-role tagger -p read -p write
    """
    with connect(url, token) as client:
        receipt = client.define_role(name, permission, description=description)
    output(receipt, as_json, lambda r: f"role {name}: {receipt_line(r)}")


@app.command("remove-role")
@client_command
def remove_role(
    name: Annotated[str, typer.Argument(help="The custom role's name.", show_default=False)],
    reason: Annotated[str, typer.Option("--reason", "-m", help="Why (recorded).")] = "",
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove a custom role that no grant uses.

    Example: modelreg access remove-role tagger -m "no longer needed"
    """
    with connect(url, token) as client:
        receipt = client.remove_role(name, reason)
    output(receipt, as_json, lambda r: f"role {name}: {receipt_line(r)}")


@app.command("grant")
@client_command
def grant(
    role: Annotated[str, typer.Argument(help="A built-in or custom role.", show_default=False)],
    model: Annotated[
        str,
        typer.Option(
            "--model", help="A model name, a prefix ending in *, or *.", show_default=False
        ),
    ],
    principal: Annotated[
        str | None, typer.Option("--principal", help="Grant to this principal.")
    ] = None,
    group: Annotated[
        str | None, typer.Option("--group", help="Or to every member of this OIDC group.")
    ] = None,
    reason: Annotated[str, typer.Option("--reason", "-m", help="Why (recorded).")] = "",
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Grant a role on some models to a principal or a group; effective at once.

    Example: modelreg access grant approver --model 'fraud*' --principal alice -m "on call"
    """
    if (principal is None) == (group is None):
        raise typer.BadParameter("give exactly one of --principal and --group")
    with connect(url, token) as client:
        receipt = client.grant(role, model, principal=principal, group=group, reason=reason)
    output(receipt, as_json, lambda r: f"grant {r.request_id}: {receipt_line(r)}")


@app.command("withdraw")
@client_command
def withdraw(
    grant_id: Annotated[str, typer.Argument(help="The grant's id.", show_default=False)],
    reason: Annotated[str, typer.Option("--reason", "-m", help="Why (recorded).")] = "",
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Withdraw a grant: its holder's next request no longer has it.

    Example: modelreg access withdraw 3f2a... -m "rota ended"
    """
    with connect(url, token) as client:
        receipt = client.withdraw_grant(grant_id, reason)
    output(receipt, as_json, lambda r: f"grant {grant_id}: {receipt_line(r)}")


@app.command("grants")
@client_command
def grants(
    as_of: AsOfOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """The grants now, or as they stood at a log position or time.

    Example: modelreg access grants --as-of 2026-03-03T14:03:00Z
    """
    with connect(url, token) as client:
        view = client.grants(as_of=as_of)
    output(view, as_json, _grants)


def _grants(view: AccessView) -> Table:
    grid = table(
        "grant", "principal", "group", "role", "models", "given by", "reason",
        title=f"at log position {view.position}",
    )  # fmt: skip
    for g in view.grants:
        grid.add_row(
            g.grant_id, g.principal or "", g.group or "", g.role, g.model, g.given_by, g.reason
        )
    return grid


@app.command("check")
@client_command
def check(
    principal: Annotated[str, typer.Argument(help="Who.", show_default=False)],
    permission: Annotated[
        Permission, typer.Argument(help="read, write, approve or admin.", show_default=False)
    ],
    model: Annotated[
        str | None, typer.Option("--model", help="On which model (none: the registry).")
    ] = None,
    group: Annotated[
        list[str] | None, typer.Option("--group", help="The principal's groups (repeatable).")
    ] = None,
    as_of: AsOfOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Could a principal do something on a model (now or then), and what decided.

    Example: modelreg access check alice approve --model churn --as-of 1200
    """
    with connect(url, token) as client:
        answer = client.check_access(
            principal, permission, model=model, groups=group or (), as_of=as_of
        )
    output(answer, as_json, _answer)


def _answer(answer: AccessCheck) -> str:
    verdict = "allowed" if answer.allowed else "denied"
    by = f" by {answer.decided_by}" if answer.decided_by else ""
    return f"{verdict}{by}: {answer.reason} (at log position {answer.position})"
