"""``modelreg models``: list, show, create, rename, archive and restore models. I/O: the
registry's HTTP API (``service.client``); exit codes as in ``service.cli.shared``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from events.stages import Stage
from service.cli.help import command_group
from service.cli.output import fields, output, table, when
from service.cli.shared import (
    STAGE_NAMES,
    JsonOption,
    ModelArg,
    TokenOption,
    UrlOption,
    client_command,
    connect,
    key_values,
    receipt_line,
)
from service.client.models import ModelRow, Page

app = command_group("Models: list, show, create, rename, archive, restore.")

ReasonOption = Annotated[
    str, typer.Option("--reason", "-m", help="Why (recorded in the audit log).", show_default=False)
]


def _stages(row: ModelRow) -> str:
    return ", ".join(
        f"{s}: v{v}" for s, v in row.stages.items() if v is not None and s != Stage.ARCHIVED
    )


def _aliases(aliases: dict[str, int]) -> str:
    return ", ".join(f"{a}->v{v}" for a, v in sorted(aliases.items()))


@app.command("list")
@client_command
def list_models(
    q: Annotated[
        str | None, typer.Option("--query", "-q", help="Name substring, or a glob with *.")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="key=value or key (repeat for AND).")
    ] = None,
    stage: Annotated[
        list[str] | None,
        typer.Option("--stage", help=f"Has a version in this stage: {STAGE_NAMES}."),
    ] = None,
    alias: Annotated[str | None, typer.Option("--alias", help="Has this alias.")] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="Owned by this principal.")] = None,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="e.g. 'auc>0.9' or 'auc[holdout]>=0.9'.")
    ] = None,
    archived: Annotated[
        bool, typer.Option("--archived", help="List archived models instead.")
    ] = False,
    order_by: Annotated[
        str, typer.Option("--order-by", help="name, created, updated; '-' for descending.")
    ] = "name",
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=500, help="Models per page.")
    ] = 50,
    every: Annotated[bool, typer.Option("--all", help="Every page, not just the first.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List models, with their latest version, stages and aliases.

    Examples:

        modelreg models list -q 'churn*' --stage production

        modelreg models list --tag team=risk --json | jq -r '.items[].name'
    """
    filters: dict[str, Any] = {
        "tags": tag,
        "stages": stage,
        "alias": alias,
        "owner": owner,
        "metrics": metric,
        "archived": archived,
        "order_by": order_by,
    }
    with connect(url, token) as client:
        if every:
            page: Page[ModelRow] = Page(
                items=tuple(client.iter_models(q, page_size=limit, **filters))
            )
        else:
            page = client.list_models(q, limit=limit, **filters)
    more = page.next_cursor is not None
    output(
        page,
        as_json,
        _models,
        remark=f"(more models: --all, or --limit {min(500, limit * 2)})" if more else None,
    )


def _models(page: Page[ModelRow]) -> Table:
    grid = table("name", "latest", "stages", "aliases", "owner", "updated (UTC)")
    for row in page.items:
        grid.add_row(
            row.name,
            "" if row.latest_version is None else f"v{row.latest_version}",
            _stages(row),
            _aliases(row.aliases),
            row.owner,
            when(row.updated_at),
        )
    return grid


@app.command("show")
@client_command
def show_model(
    name: ModelArg,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="The model as it stood at a log position or time.")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """A model: owner, tags, versions, stages, aliases.

    Examples:

        modelreg models show churn

        modelreg models show churn --as-of 2026-03-03T14:03:00Z --json
    """
    with connect(url, token) as client:
        row = client.get_model(name, as_of=as_of)
    output(row, as_json, _model)


def _model(row: ModelRow) -> Table:
    counts = ", ".join(f"{s} {n}" for s, n in row.stage_counts.items() if n)
    return fields(
        f"{row.name}" + (" (archived)" if row.archived else ""),
        {
            "model id": row.model_id,
            "description": row.description,
            "owner": row.owner,
            "tags": ", ".join(f"{k}={v}" for k, v in sorted(row.tags.items())),
            "versions": f"{row.version_count}"
            + (f" (latest v{row.latest_version}; {counts})" if row.latest_version else ""),
            "stages": _stages(row),
            "aliases": _aliases(row.aliases),
            "created": when(row.created_at),
            "updated": when(row.updated_at),
            "position": row.position,
        },
    )


@app.command("create")
@client_command
def create(
    name: Annotated[
        str, typer.Argument(help="Letters, digits, '.', '_', '-'.", show_default=False)
    ],
    description: Annotated[
        str, typer.Option("--description", "-d", help="What the model is for.")
    ] = "",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="key=value (repeatable).")] = None,
    owner: Annotated[
        str | None, typer.Option("--owner", help="Who owns it (default: you).")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register a model (its name must be free).

    Example: modelreg models create churn -d "Churn risk, monthly" --tag team=risk
    """
    tags = key_values(tag)
    with connect(url, token) as client:
        receipt = client.create_model(name, description=description, tags=tags, owner=owner)
    output(receipt, as_json, lambda r: f"created model {name}: {receipt_line(r)}")


@app.command("rename")
@client_command
def rename(
    name: ModelArg,
    new_name: Annotated[str, typer.Argument(help="The new name.", show_default=False)],
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Rename a model (its id, versions and history stay).

    Example: modelreg models rename churn churn-monthly
    """
    with connect(url, token) as client:
        receipt = client.rename_model(name, new_name)
    output(receipt, as_json, lambda r: f"renamed {name} to {new_name}: {receipt_line(r)}")


@app.command("archive")
@client_command
def archive(
    name: ModelArg,
    reason: ReasonOption,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Archive a model (admin): hidden from lists, read-only, restorable.

    Example: modelreg models archive churn -m "replaced by churn-v2"
    """
    with connect(url, token) as client:
        receipt = client.archive_model(name, reason)
    output(receipt, as_json, lambda r: f"archived {name}: {receipt_line(r)}")


@app.command("delete")
@client_command
def delete(
    name: ModelArg,
    reason: ReasonOption,
    yes: Annotated[
        bool, typer.Option("--yes", help="Do not ask; for scripts (the reason is still required).")
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a model (admin): gone from lists, search and MLflow, its name free again.

    The log keeps its history and a tombstone saying who deleted it and why; its stored
    files can be collected after the GC grace period (modelreg audit artifacts --gc).
    Refused while a version is in production.

    Example: modelreg models delete churn-test -m "created by mistake" --yes
    """
    if not yes:
        typer.confirm(
            f"Delete model {name!r}? Its name becomes free; its history stays", abort=True
        )
    with connect(url, token) as client:
        receipt = client.delete_model(name, reason)
    output(receipt, as_json, lambda r: f"deleted {name}: {receipt_line(r)}")


@app.command("restore")
@client_command
def restore(
    name: ModelArg,
    reason: ReasonOption,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Restore an archived model (admin).

    Example: modelreg models restore churn -m "still needed by billing"
    """
    with connect(url, token) as client:
        receipt = client.restore_model(name, reason)
    output(receipt, as_json, lambda r: f"restored {name}: {receipt_line(r)}")
