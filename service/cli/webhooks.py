"""``modelreg webhooks``: HTTP webhook subscriptions and their delivery log. I/O: the
registry's HTTP API; exit codes as in ``service.cli.shared``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Group
from rich.table import Table

from service.cli.help import command_group
from service.cli.output import fields, output, table
from service.cli.shared import (
    JsonOption,
    TokenOption,
    UrlOption,
    client_command,
    connect,
    receipt_line,
)

app = command_group("HTTP webhooks: subscribe a URL to events, inspect and redeliver.")

SubscriptionArg = Annotated[str, typer.Argument(help="The subscription's id.", show_default=False)]
PositionArg = Annotated[
    int, typer.Argument(help="The event's log position.", min=1, show_default=False)
]


@app.command("create")
@client_command
def create(
    target: Annotated[str, typer.Argument(help="The receiver's URL.", show_default=False)],
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event", "-e", help="Event type or prefix (model.*); repeatable; none: all."
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Model name or prefix (churn*); repeatable; none: all."),
    ] = None,
    payload: Annotated[
        str, typer.Option("--payload", help="Payload shape: modelreg or mlflow.")
    ] = "modelreg",
    description: Annotated[
        str, typer.Option("--description", "-d", help="What the webhook is for.")
    ] = "",
    secret: Annotated[
        str | None,
        typer.Option("--secret", help="Your own whsec_... signing secret (default: generated)."),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Subscribe a URL; the signing secret is printed once.

    Examples:

        modelreg webhooks create https://ci.acme.io/hooks/modelreg -e model.stage_transitioned --model 'churn*'

        SECRET=$(modelreg webhooks create https://hooks.acme.io/x --payload mlflow --json | jq -r .secret)
    """
    if payload not in ("modelreg", "mlflow"):
        raise typer.BadParameter("modelreg or mlflow", param_hint="--payload")
    with connect(url, token) as client:
        created = client.create_webhook(
            target,
            event_types=event or (),
            models=model or (),
            payload_format="mlflow" if payload == "mlflow" else "modelreg",
            description=description,
            secret=secret,
        )
    output(created, as_json, _created)


def _created(created: dict[str, Any]) -> str:
    line = f"webhook {created['subscription_id']} -> {created['url']}"
    if created.get("secret"):
        line += f"\nsecret (shown once; give it to the receiver): {created['secret']}"
    return line


@app.command("list")
@client_command
def list_webhooks(
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """The live subscriptions this token may manage."""
    with connect(url, token) as client:
        found = client.list_webhooks()
    output(found, as_json, _subscriptions)


def _subscriptions(found: list[dict[str, Any]]) -> Table:
    grid = table("id", "url", "events", "models", "payload", "description")
    for w in found:
        grid.add_row(
            w["subscription_id"],
            w["url"],
            ", ".join(w["event_types"]) or "*",
            ", ".join(w["models"]) or "*",
            w["payload_format"],
            w["description"],
        )
    return grid


@app.command("show")
@client_command
def show(
    subscription_id: SubscriptionArg,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """One subscription."""
    with connect(url, token) as client:
        found = client.get_webhook(subscription_id)
    output(found, as_json, lambda w: fields(f"webhook {w['subscription_id']}", w))


@app.command("deliveries")
@client_command
def deliveries(
    subscription_id: SubscriptionArg,
    position: Annotated[
        int | None,
        typer.Option("--position", "-p", min=1, help="One delivery, with every attempt."),
    ] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="pending, delivered, dead or redeliver.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=500, help="At most this many, newest first.")
    ] = 50,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """The delivery log, newest first: status, response code, latency, attempts.

    Example: modelreg webhooks deliveries 3f2a... --status dead
    """
    with connect(url, token) as client:
        if position is not None:
            detail = client.webhook_delivery(subscription_id, position)
            output(detail, as_json, _detail)
            return
        found = client.webhook_deliveries(subscription_id, status=status, limit=limit)
    output(found, as_json, _deliveries)


def _deliveries(found: list[dict[str, Any]]) -> Table:
    grid = table("position", "event", "status", "attempts", "code", "latency ms", "error")
    for d in found:
        grid.add_row(
            str(d["log_position"]),
            d["event_type"],
            d["status"],
            str(d["attempts"]),
            str(d["response_code"] or ""),
            "" if d["latency_ms"] is None else f"{d['latency_ms']:.1f}",
            d["error"] or "",
        )
    return grid


def _detail(detail: dict[str, Any]) -> Group:
    attempts = table("attempt", "at (UTC)", "code", "latency ms", "error")
    for a in detail["attempts"]:
        attempts.add_row(
            str(a["attempt"]),
            str(a["attempted_at"]),
            str(a["response_code"] or ""),
            f"{a['latency_ms']:.1f}",
            a["error"] or "",
        )
    return Group(fields("delivery", detail["delivery"]), attempts)


@app.command("redeliver")
@client_command
def redeliver(
    subscription_id: SubscriptionArg,
    position: PositionArg,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send a delivered or dead-lettered event again (same webhook-id)."""
    with connect(url, token) as client:
        queued = client.redeliver_webhook(subscription_id, position)
    output(
        queued,
        as_json,
        lambda q: f"queued {q['log_position']} again (it was {q['previous_status']})",
    )


@app.command("delete")
@client_command
def delete(
    subscription_id: SubscriptionArg,
    reason: Annotated[str, typer.Option("--reason", "-m", help="Why (recorded).")] = "",
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stop delivering to a subscription; its secret is erased."""
    with connect(url, token) as client:
        receipt = client.delete_webhook(subscription_id, reason)
    output(receipt, as_json, lambda r: f"deleted {subscription_id}: {receipt_line(r)}")
