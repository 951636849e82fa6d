"""``modelreg tokens``: issue, list and revoke access tokens (admin). I/O: the registry's
HTTP API; exit codes as in ``service.cli.shared``. ``tokens create --admin`` is the
break-glass path: it writes to the database directly (``service.cli.break_glass``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from events.access import Role
from events.errors import DomainError
from service.cli.help import command_group
from service.cli.output import output, table, when
from service.cli.shared import (
    JsonOption,
    TokenOption,
    UrlOption,
    client_command,
    connect,
    fail,
    parse_duration,
    parse_time,
    receipt_line,
)
from service.client.models import IssuedToken, TokenInfo
from service.settings import SettingsError, load_settings

EXIT_CANNOT_RUN = 2  # as the other database-side commands: the database or pepper is unusable

app = command_group("Access tokens (admin): create, issue, list, revoke.")


def _expiry(expires_in: str | None, expires_at: str | None) -> datetime | None:
    if expires_in and expires_at:
        raise typer.BadParameter("give --expires-in or --expires-at, not both")
    if expires_in:
        delta = parse_duration(expires_in)
        if delta is None:
            raise typer.BadParameter(
                f"{expires_in!r} is not a duration like 90d, 12h or 30m", param_hint="--expires-in"
            )
        return datetime.now(UTC) + delta
    return parse_time(expires_at, "--expires-at")


@app.command("create")
@client_command
def create(
    principal: Annotated[
        str, typer.Argument(help="Who the token is for (a person or a system).", show_default=False)
    ],
    role: Annotated[
        list[Role] | None,
        typer.Option(
            "--role",
            "-r",
            help="reader, contributor, approver, admin (repeatable).",
            show_default=False,
        ),
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help="Only these models; 'churn*' for a prefix (repeatable)."),
    ] = None,
    expires_in: Annotated[str | None, typer.Option("--expires-in", help="e.g. 90d, 12h.")] = None,
    expires_at: Annotated[str | None, typer.Option("--expires-at", help="RFC 3339 time.")] = None,
    description: Annotated[
        str, typer.Option("--description", "-d", help="What the token is for.")
    ] = "",
    admin: Annotated[
        bool,
        typer.Option(
            "--admin",
            help="Break-glass: mint a registry admin token in the database directly, with no"
            " token and no API (needs the database and the token pepper, as the servers do).",
        ),
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="With --admin: the data dir (env MODELREG_DATA_DIR)."),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Issue a token; its secret is printed once.

    Examples:

        modelreg tokens create ci-trainer -r contributor --scope 'churn*' --expires-in 90d

        export MODELREG_TOKEN=$(modelreg tokens create alice -r approver --json | jq -r .secret)

        modelreg tokens create ops --admin     # locked out: run where the database is reachable
    """
    if admin:
        if scope or role:
            raise typer.BadParameter("--admin mints a registry-wide admin: no --role or --scope")
        _break_glass(principal, _expiry(expires_in, expires_at), description, data_dir, as_json)
        return
    if not role:
        raise typer.BadParameter("give at least one --role (or --admin)", param_hint="--role")
    with connect(url, token) as client:
        issued = client.create_token(
            principal,
            role,
            scopes=scope or (),
            expires_at=_expiry(expires_in, expires_at),
            description=description,
        )
    output(issued, as_json, _issued, remark=None if issued.secret else f"no secret: {issued.note}")


def _break_glass(
    principal: str,
    expires_at: datetime | None,
    description: str,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    # The database stack loads only when needed: the other commands talk HTTP.
    from service.cli.break_glass import mint_admin
    from service.commands.token_secrets import PepperError

    try:
        settings = load_settings(None, data_dir=str(data_dir) if data_dir else None)
        token_id, secret = mint_admin(
            settings, principal, expires_at=expires_at, description=description
        )
    except (SettingsError, PepperError, DomainError) as exc:
        fail(str(exc), EXIT_CANNOT_RUN)
    issued = IssuedToken(
        token_id=token_id,
        principal=principal,
        roles=[Role.ADMIN],
        scopes=[],
        expires_at=expires_at,
        secret=secret,
        note="break-glass: minted in the database; the secret is shown once",
    )
    output(issued, as_json, _issued)


def _issued(issued: IssuedToken) -> str:
    line = (
        f"token {issued.token_id} for {issued.principal} ({', '.join(issued.roles)})"
        + (f", models {', '.join(issued.scopes)}" if issued.scopes else "")
        + (f", expires {when(issued.expires_at)} UTC" if issued.expires_at else "")
    )
    if issued.secret:
        line += f"\nsecret (shown once; store it now): {issued.secret}"
    return line


@app.command("issue")
@client_command
def issue(
    service_account: Annotated[
        str,
        typer.Option("--service-account", help="The service account.", show_default=False),
    ],
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="e.g. 7d (within the account's limit).")
    ] = None,
    expires_at: Annotated[str | None, typer.Option("--expires-at", help="RFC 3339 time.")] = None,
    description: Annotated[
        str, typer.Option("--description", "-d", help="What the token is for.")
    ] = "",
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Issue a token of a service account: its roles and scopes, an expiry within its limit.

    Example: modelreg tokens issue --service-account ci-bot --expires-in 7d
    """
    expiry = _expiry(expires_in, expires_at)
    if expiry is None:
        raise typer.BadParameter("a service account's token must expire: give --expires-in")
    with connect(url, token) as client:
        issued = client.create_service_account_token(
            service_account, expiry, description=description
        )
    output(issued, as_json, _issued, remark=None if issued.secret else f"no secret: {issued.note}")


@app.command("list")
@client_command
def list_tokens(
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """Every token: principal, roles, scopes, expiry, revoked.

    Example: modelreg tokens list --json | jq -r '.[] | select(.revoked | not) | .token_id'
    """
    with connect(url, token) as client:
        found = client.list_tokens()
    output(found, as_json, _tokens)


def _tokens(found: list[TokenInfo]) -> Table:
    grid = table("token", "principal", "roles", "scopes", "expires (UTC)", "revoked", "description")
    for t in found:
        grid.add_row(
            t.token_id,
            t.principal,
            ", ".join(t.roles),
            ", ".join(t.scopes) or "*",
            when(t.expires_at),
            "yes" if t.revoked else "",
            t.description,
        )
    return grid


@app.command("revoke")
@client_command
def revoke(
    token_id: Annotated[
        str, typer.Argument(help="The token's id (not its secret).", show_default=False)
    ],
    reason: Annotated[
        str, typer.Option("--reason", "-m", help="Why (recorded in the audit log).")
    ] = "",
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke a token: it stops working at once.

    Example: modelreg tokens revoke 3f2a... -m "laptop lost"
    """
    with connect(url, token) as client:
        receipt = client.revoke_token(token_id, reason)
    output(receipt, as_json, lambda r: f"revoked {token_id}: {receipt_line(r)}")
