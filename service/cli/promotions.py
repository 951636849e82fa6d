"""``modelreg promotions``: the promotion requests waiting for approval (or decided).
I/O: the registry's HTTP API; exit codes as in ``service.cli.shared``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Group
from rich.table import Table

from service.cli.help import command_group
from service.cli.output import fields, output, table, when
from service.cli.shared import (
    JsonOption,
    TokenOption,
    UrlOption,
    client_command,
    complete_model,
    connect,
)
from service.client.models import ApprovalRequest

app = command_group(
    "Promotion requests: list, show (approve and reject them with `modelreg approve|reject`)."
)


class State(StrEnum):
    open = "open"
    decided = "decided"
    mine = "mine"


@app.command("list")
@client_command
def list_requests(
    state: Annotated[
        State, typer.Option("--state", help="open, decided, or mine (awaiting my approval).")
    ] = State.open,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Only this model's.", autocompletion=complete_model),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Promotion requests, open ones by default.

    Examples:

        modelreg promotions list --state mine

        modelreg promotions list --model churn --state decided --json
    """
    with connect(url, token) as client:
        found = client.list_promotions(state.value, model=model)
    output(found, as_json, _requests)


def _target(r: ApprovalRequest) -> str:
    return " + ".join(t for t in (r.target_stage or "", f"alias {r.alias}" if r.alias else "") if t)


def _requests(found: list[ApprovalRequest]) -> Table:
    grid = table(
        "request",
        "version",
        "target",
        "status",
        "approvals",
        "requested by",
        "requested (UTC)",
        "waiting for",
    )
    for r in found:
        grid.add_row(
            r.request_id,
            f"v{r.version}",
            _target(r),
            r.status + (" (overdue)" if r.overdue else ""),
            f"{len(r.approvals)}/{r.approvals_required}",
            r.requested_by,
            when(r.requested_at),
            r.who_must_act if r.status == "pending" else "",
        )
    return grid


@app.command("show")
@client_command
def show_request(
    request_id: Annotated[str, typer.Argument(help="Request id.", show_default=False)],
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """One promotion request, with its votes.

    Example: modelreg promotions show 5f0c...
    """
    with connect(url, token) as client:
        found = client.get_promotion(request_id)
    output(found, as_json, _request)


def _request(r: ApprovalRequest) -> Group:
    summary = fields(
        f"request {r.request_id}",
        {
            "version": f"v{r.version}",
            "target": _target(r),
            "status": r.status,
            "justification": r.justification,
            "requested": f"{r.requested_by} at {when(r.requested_at)} UTC",
            "expires": when(r.expires_at),
            "approvals": f"{len(r.approvals)} of {r.approvals_required} ({', '.join(r.approvals)})",
            "may not approve": ", ".join(r.approvers_excluded),
            "waiting for": r.who_must_act if r.status == "pending" else "",
            "decided": f"{r.decided_by} at {when(r.decided_at)}: {r.decision_comment or ''}"
            if r.decided_by
            else "",
            "rules": ", ".join(r.rules or []),
        },
    )
    if not r.votes:
        return Group(summary)
    votes = table("actor", "vote", "at (UTC)", "comment", title="votes")
    for v in r.votes:
        votes.add_row(v.actor, v.vote, when(v.at), v.comment)
    return Group(summary, votes)
