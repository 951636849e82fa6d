"""``modelreg policy``: read and set the governance policy (its stages and transitions),
registry-wide or for one model. I/O: the registry's HTTP API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from events.stages import StageDefinition
from service.cli.help import command_group
from service.cli.output import output
from service.cli.shared import (
    JsonOption,
    TokenOption,
    UrlOption,
    client_command,
    connect,
    receipt_line,
)
from service.client.models import PolicyView

app = command_group("The governance policy: the lifecycle's stages, transitions and approvals.")

ModelOption = Annotated[
    str | None,
    typer.Option("--model", help="One model's own policy (default: the registry-wide one)."),
]


def _lifecycle(view: PolicyView) -> str:
    def flags(stage: StageDefinition) -> str:
        environments = stage.environment_names()
        marks = [
            *(["initial"] if stage.name == view.initial_stage else []),
            *(["one at a time"] if stage.exclusive and not environments else []),
            *(
                [
                    ("one at a time in each of " if stage.exclusive else "in ")
                    + ", ".join(environments)
                ]
                if environments
                else []
            ),
            *(["final"] if stage.terminal else []),
        ]
        return f"{stage.name} ({', '.join(marks)})" if marks else stage.name

    lines = [
        f"{view.source} policy",
        "stages: " + " -> ".join(flags(s) for s in view.stages),
    ]
    for rule in view.policy.transitions:
        need = f"{rule.approvals} approval(s)" if rule.approvals else "direct"
        gates = "".join(f"; gate {g.describe()}" for g in rule.gates)
        lines.append(f"  {rule.from_stage} -> {rule.to_stage}: {need}{gates}")
    return "\n".join(lines)


@app.command("show")
@client_command
def show(
    model: ModelOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """The policy in force: its stages in order (initial, exclusive, final) and transitions.

    Examples:

        modelreg policy show

        modelreg policy show --model churn --json
    """
    with connect(url, token) as client:
        view = client.get_policy(model)
    output(view, as_json, _lifecycle)


@app.command("set")
@client_command
def set_policy(
    file: Annotated[
        Path,
        typer.Argument(
            help="A JSON policy (the body of PUT /api/v1/policy's 'policy'); '-' reads stdin.",
            show_default=False,
        ),
    ],
    model: ModelOption = None,
    comment: Annotated[str, typer.Option("--comment", "-m", help="Why.")] = "",
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set the registry-wide policy (admin), or one model's with --model.

    Example (the glossary lifecycle, README "Custom stages"):

        modelreg policy set lifecycle.json -m "training, staging, production"
    """
    text = typer.get_text_stream("stdin").read() if str(file) == "-" else file.read_text()
    try:
        policy: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="FILE") from None
    if not isinstance(policy, dict):
        raise typer.BadParameter("a policy is a JSON object", param_hint="FILE")
    with connect(url, token) as client:
        receipt = client.set_policy(policy, model=model, comment=comment)
    output(receipt, as_json, receipt_line)


@app.command("clear")
@client_command
def clear(
    model: Annotated[str, typer.Argument(help="The model.", show_default=False)],
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Drop a model's own policy: the registry-wide one applies again."""
    with connect(url, token) as client:
        receipt = client.clear_policy(model)
    output(receipt, as_json, receipt_line)
