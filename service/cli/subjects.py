"""``modelreg subjects``: who a pseudonymous subject id stands for, and erasure (admin). I/O:
the registry's HTTP API; exit codes as in ``service.cli.shared``.

    modelreg subjects show WHO [--json]
    modelreg subjects erase WHO --reason TEXT [--yes] [--json]
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from service.cli.help import command_group
from service.cli.output import fields, output, when
from service.cli.shared import JsonOption, TokenOption, UrlOption, client_command, connect
from service.client.models import Erasure, Subject

app = command_group("People as events record them (subject ids), and erasure of their name.")

WhoArg = Annotated[
    str, typer.Argument(help="A subject id (subj_...) or a principal name.", show_default=False)
]


@app.command("show")
@client_command
def show(
    who: WhoArg,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Who a subject id stands for (events and NATS messages name people by id), or a
    principal's subject id; whether, when and by whom it was erased.

    Examples:

        modelreg subjects show subj_3k2j...     # a consumer re-reading an event's actor

        modelreg subjects show alice@example.com
    """
    with connect(url, token) as client:
        subject = client.subject(who)
    output(subject, as_json, _subject)


@app.command("erase")
@client_command
def erase(
    who: WhoArg,
    reason: Annotated[
        str, typer.Option("--reason", "-m", help="Why (kept beside the erasure, not in the log).")
    ],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Erase a person (admin): their tokens are revoked, their name deleted; every answer
    then shows "erased subject". The log is not changed and still verifies.

    Examples:

        modelreg subjects erase alice@example.com --reason "GDPR art. 17 request #4411"
    """
    if not yes:
        typer.confirm(f"erase {who} for good (this cannot be undone)?", abort=True)
    with connect(url, token) as client:
        erasure = client.erase_subject(who, reason)
    output(erasure, as_json, _erasure)


def _subject(subject: Subject) -> Table:
    return fields(
        subject.subject_id,
        {
            "name": subject.display,
            "created": when(subject.created_at) + " UTC",
            "erased": f"{when(subject.erased_at)} UTC by {subject.erased_by}"
            if subject.erased
            else "",
            "reason": subject.reason,
        },
    )


def _erasure(erasure: Erasure) -> str:
    lines = [
        f"erased {erasure.subject.subject_id}: subject.erased"
        + (f" (log position {erasure.position})" if erasure.position is not None else ""),
        f"tokens revoked: {', '.join(erasure.revoked_tokens) or 'none'}",
        f"refused-request rows deleted: {erasure.denials_deleted}",
    ]
    if erasure.legacy_events:
        lines.append(
            f"{erasure.legacy_events} event(s) recorded before subjects existed still name"
            " the person in clear: recorded events never change (see the README)"
        )
    return "\n".join(lines)
