"""The top-level governance commands: ``whoami``, ``stage``, ``promote``, ``approve``,
``reject`` and ``history``. I/O: the registry's HTTP API; exit codes as in
``service.cli.shared``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated

import msgspec
import typer
from rich.table import Table

from events.stages import placement
from service.cli.output import fields, output, table, when
from service.cli.shared import (
    STAGE_NAMES,
    CommentOption,
    EnvOption,
    JsonOption,
    ModelArg,
    TokenOption,
    UrlOption,
    VersionArg,
    client_command,
    connect,
    parse_time,
    receipt_line,
)
from service.client.models import AuditEntry, Principal, Receipt

# ---------------------------------------------------------------- whoami


@client_command
def whoami(url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Who the token belongs to, and what it may do.

    Example: modelreg whoami --json | jq -r .name
    """
    with connect(url, token) as client:
        me = client.whoami()
        registry = client.url
    output(
        {"url": registry, **msgspec.structs.asdict(me), "permissions": sorted(me.permissions)},
        as_json,
        lambda _: _principal(me, registry),
    )


def _principal(me: Principal, registry: str) -> Table:
    return fields(
        None,
        {
            "principal": me.name,
            "token": me.token_id,
            "roles": ", ".join(me.roles),
            "permissions": ", ".join(sorted(me.permissions)),
            "scopes": ", ".join(me.scopes) or "every model",
            "registry": registry,
        },
    )


# ---------------------------------------------------------------- governed moves


def moved(what: str) -> Callable[[Receipt], str]:
    """The sentence for a governed move: done, or waiting for approval (and how to give it)."""

    def sentence(receipt: Receipt) -> str:
        if receipt.pending:
            return (
                f"{what}: needs approval; opened promotion request {receipt.request_id}\n"
                f"  approve with: modelreg approve {receipt.request_id}"
            )
        also = "".join(f"\n  also moved: {effect}" for effect in receipt.also_moved)
        return f"{what}: done; {receipt_line(receipt)}{also}"

    return sentence


@client_command
def stage(
    model: ModelArg,
    version: VersionArg,
    to: Annotated[
        str,
        typer.Argument(metavar="STAGE", help=f"Target stage: {STAGE_NAMES}.", show_default=False),
    ],
    comment: CommentOption = "",
    env: EnvOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move a version to a stage; when the policy needs approval, open a promotion request.

    Examples:

        modelreg stage churn 2 staging -m "passed offline eval"

        modelreg stage churn 2 production -m "beats v1 on holdout auc"

        modelreg stage churn 8 production --env eu -m "eu first"
    """
    transition(model, version, to, comment, env, url, token, as_json)


def transition(
    model: str,
    version: int,
    to: str,
    comment: str,
    env: str | None,
    url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """``modelreg stage`` and ``modelreg versions transition``."""
    with connect(url, token) as client:
        receipt = client.transition(model, version, to, comment=comment, environment=env)
    target = to if env is None else placement(to, env)
    output(receipt, as_json, moved(f"{model} v{version} -> {target}"))


@client_command
def promote(
    model: ModelArg,
    version: VersionArg,
    justification: Annotated[
        str, typer.Option("--justification", "-m", help="Why (required).", show_default=False)
    ],
    to: Annotated[str | None, typer.Option("--to", help=f"Target stage: {STAGE_NAMES}.")] = None,
    alias: Annotated[
        str | None, typer.Option("--alias", help="Alias to point at the version.")
    ] = None,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="A rollback (the policy may need fewer approvals).")
    ] = False,
    env: EnvOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Request a promotion (a stage and/or an alias); runs at once if no approval is needed.

    Examples:

        modelreg promote churn 3 --to production -m "auc 0.95 on holdout"

        modelreg promote churn 3 --alias champion -m "best auc"

        modelreg promote churn 8 --to production --env us -m "eu went well"
    """
    if to is None and alias is None:
        raise typer.BadParameter("name a target: --to STAGE and/or --alias ALIAS")
    with connect(url, token) as client:
        receipt = client.request_promotion(
            model,
            version,
            justification=justification,
            stage=to,
            alias=alias,
            rollback=rollback,
            environment=env,
        )
    target = " and ".join(
        t for t in (str(to) if to else "", f"alias {alias}" if alias else "") if t
    )
    output(receipt, as_json, moved(f"{model} v{version} -> {target}"))


RequestArg = Annotated[
    str,
    typer.Argument(
        help="Promotion request id (shown by promote, stage, promotions list).", show_default=False
    ),
]


def _approved(receipt: Receipt) -> str:
    if receipt.executed:
        return f"approved; promotion executed: {receipt.model} v{receipt.version} ({receipt_line(receipt)})"
    return f"approved; the request still needs more approvals ({receipt_line(receipt)})"


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
    output(receipt, as_json, _approved)


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
    output(
        receipt,
        as_json,
        lambda r: f"rejected: {r.model} v{r.version} ({receipt_line(r)})",
    )


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
    more = page.next_cursor is not None
    output(
        page,
        as_json,
        lambda p: audit_table(p.items),
        remark=f"(more: raise --limit; next cursor {page.next_cursor})" if more else None,
    )
