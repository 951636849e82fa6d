"""``modelreg versions``: list, show, register and deprecate versions. I/O: the registry's
HTTP API (``service.client``), local files (hashing artifacts); exit codes as in
``service.cli.shared``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.table import Table

from service.cli import lifecycle
from service.cli.help import command_group
from service.cli.output import fields, number, output, table, when
from service.cli.shared import (
    EXIT_REFUSED,
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
    fail,
    key_values,
    receipt_line,
    scalar,
)
from service.client.gitinfo import detect_code
from service.client.manifest import DEFAULT_EXCLUDE
from service.client.models import (
    Downloaded,
    MetricValue,
    Page,
    RegisteredVersion,
    RunReference,
    VersionRow,
)

app = command_group("Versions: list, show, register (uploading a directory), download, deprecate.")


def metric_summary(metrics: tuple[MetricValue, ...] | list[MetricValue], limit: int = 4) -> str:
    shown = [
        f"{m.key}{f'[{m.dataset}]' if m.dataset else ''}={number(m.value)}" for m in metrics[:limit]
    ]
    more = len(metrics) - limit
    return ", ".join(shown) + (f", +{more}" if more > 0 else "")


def _stage(row: VersionRow) -> str:
    where = f"{row.stage}@{','.join(row.environments)}" if row.environments else str(row.stage)
    return where + (" (deprecated)" if row.deprecated else "")


@app.command("list")
@client_command
def list_versions(
    model: ModelArg,
    stage: Annotated[
        list[str] | None,
        typer.Option("--stage", help=f"In this stage: {STAGE_NAMES} (repeatable: any of)."),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="key=value or key (repeat for AND).")
    ] = None,
    alias: Annotated[
        str | None, typer.Option("--alias", help="The version this alias points at.")
    ] = None,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="e.g. 'auc>0.9' or 'auc[holdout]>=0.9'.")
    ] = None,
    deprecated: Annotated[
        bool | None,
        typer.Option(
            "--deprecated/--not-deprecated", help="Only (not) deprecated ones.", show_default=False
        ),
    ] = None,
    order_by: Annotated[
        str,
        typer.Option(
            "--order-by", help="version, created, updated, metric:KEY[DATASET]; '-' descending."
        ),
    ] = "-version",
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=500, help="At most this many versions.")
    ] = 50,
    env: Annotated[
        str | None,
        typer.Option("--env", help="In this environment of their stage (e.g. eu)."),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List a model's versions (newest first) with stage, aliases and latest metrics.

    Examples:

        modelreg versions list churn --stage staging --stage production

        modelreg versions list churn --stage production --env eu

        modelreg versions list churn --order-by '-metric:auc[holdout]' -n 3 --json
    """
    with connect(url, token) as client:
        page = client.list_versions(
            model,
            stages=stage,
            tags=tag,
            alias=alias,
            metrics=metric,
            deprecated=deprecated,
            order_by=order_by,
            limit=limit,
            environment=env,
        )
    more = page.next_cursor is not None
    output(page, as_json, _versions, remark="(more versions: raise --limit)" if more else None)


def _versions(page: Page[VersionRow]) -> Table:
    grid = table("version", "stage", "aliases", "metrics", "registered by", "created (UTC)")
    for row in page.items:
        grid.add_row(
            f"v{row.version}",
            _stage(row),
            ", ".join(row.aliases),
            metric_summary(row.metrics),
            row.registered_by,
            when(row.created_at),
        )
    return grid


@app.command("show")
@client_command
def show_version(
    model: ModelArg,
    version: Annotated[str, typer.Argument(help="Version number or alias.", show_default=False)],
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="As it stood at a log position or time.")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """A version: stage, aliases, content (artifacts, code, params, datasets), metrics.

    Examples:

        modelreg versions show churn 3

        modelreg versions show churn champion --json | jq .content.artifacts
    """
    with connect(url, token) as client:
        row = client.get_version(model, version, as_of=as_of)
    output(row, as_json, _version)


def _version(row: VersionRow) -> Group:
    content = row.content
    code = content.code if content else None
    parts: list[RenderableType] = []
    parts.append(
        fields(
            f"{row.model_name} v{row.version}",
            {
                "stage": f"{_stage(row)} since {when(row.stage_since)}",
                "aliases": ", ".join(row.aliases),
                "description": row.description,
                "tags": ", ".join(f"{k}={v}" for k, v in sorted(row.tags.items())),
                "registered by": f"{row.registered_by} at {when(row.created_at)}",
                "content digest": row.content_digest,
                "code": f"{code.repository} @ {code.commit[:12]}"
                + (f" ({code.path})" if code.path else "")
                if code
                else "",
                "python": content.dependencies.python_version
                if content and content.dependencies
                else "",
                "run": _run(content.run) if content and content.run else "",
                "deprecated": (row.deprecation_reason or "yes") if row.deprecated else "",
            },
        )
    )
    if content and content.artifacts:
        grid = table("artifact", "size", "sha256", "uri", title="artifacts")
        for a in content.artifacts:
            grid.add_row(a.path, f"{a.size:,}", a.sha256[:16], a.uri)
        parts.append(grid)
    if content and content.parameters:
        grid = table("param", "value", title="params")
        for key, value in sorted(content.parameters.items()):
            grid.add_row(key, str(value))
        parts.append(grid)
    if content and content.datasets:
        grid = table("dataset", "role", "digest", "uri", title="datasets")
        for d in content.datasets:
            grid.add_row(d.name, str(d.role), d.digest, d.uri)
        parts.append(grid)
    if row.metrics:
        parts.append(metrics_table(row.metrics))
    return Group(*parts)


def _run(run: RunReference) -> str:
    return " ".join(part for part in (run.tracker, run.run_id, run.url) if part)


def metrics_table(metrics: tuple[MetricValue, ...] | list[MetricValue]) -> Table:
    grid = table("metric", "dataset", "value", "step", "logged (UTC)", title="metrics (latest)")
    for m in metrics:
        grid.add_row(m.key, m.dataset, number(m.value), str(m.step), when(m.timestamp))
    return grid


@app.command("register")
@client_command
def register(
    model: ModelArg,
    artifacts: Annotated[
        Path,
        typer.Argument(
            help="Directory (or file) holding the model's files.",
            show_default=False,
            exists=True,
            readable=True,
        ),
    ],
    external: Annotated[
        bool,
        typer.Option(
            "--external",
            help="Upload nothing: record where the files are (their local file:// paths, "
            "or --uri) instead.",
        ),
    ] = False,
    uri: Annotated[
        str | None,
        typer.Option(
            "--uri",
            help="Upload nothing: the files are stored there, e.g. s3://models/churn/7 "
            "(implies --external).",
        ),
    ] = None,
    parallel: Annotated[
        int, typer.Option("--parallel", min=1, max=64, help="Files uploaded at once.")
    ] = 4,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Training parameter key=value (repeatable)."),
    ] = None,
    params_file: Annotated[
        Path | None,
        typer.Option(
            "--params-file", help="A JSON object of parameters.", exists=True, dir_okay=False
        ),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", help="Metric key=value logged at step 0 (repeatable)."),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset the --metric values were measured on.")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="key=value (repeatable).")] = None,
    description: Annotated[
        str, typer.Option("--description", "-d", help="What is new in this version.")
    ] = "",
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            help="Glob of files to leave out, besides .git and __pycache__ (repeatable).",
        ),
    ] = None,
    code: Annotated[
        bool,
        typer.Option("--code/--no-code", help="Record the git checkout of the current directory."),
    ] = True,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Experiment-tracker run id.")
    ] = None,
    run_url: Annotated[
        str | None, typer.Option("--run-url", help="Experiment-tracker run URL.")
    ] = None,
    create: Annotated[
        bool, typer.Option("--create/--no-create", help="Register the model if it does not exist.")
    ] = True,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bars while hashing and uploading, on stderr "
            "(default: for large directories on a terminal).",
            show_default=False,
        ),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register a new version from a directory: its files are hashed here (streaming) and
    uploaded to the registry (only those the model has not stored yet), then the version
    records every file's path, size and sha256, the git checkout of the current
    directory, parameters and metrics. --external/--uri upload nothing.

    Examples:

        modelreg versions register churn out/ -p lr=0.1 -p depth=6 --metric auc=0.93 --dataset holdout

        modelreg versions register churn out/ --uri s3://models/churn/run-42 --params-file params.json --json
    """
    params: dict[str, Any] = {}
    if params_file is not None:
        loaded = json.loads(params_file.read_text())
        if not isinstance(loaded, dict):
            raise typer.BadParameter("the file must hold a JSON object", param_hint="--params-file")
        params.update(loaded)
    params.update({k: scalar(v) for k, v in key_values(param).items()})
    metrics: dict[str, float] = {}
    for key, value in key_values(metric).items():
        try:
            metrics[key] = float(value)
        except ValueError:
            raise typer.BadParameter(
                f"{key}={value}: not a number", param_hint="--metric"
            ) from None
    run = RunReference(run_id=run_id, url=run_url or "") if run_id else None
    if run_url and not run_id:
        raise typer.BadParameter("--run-url needs --run-id")
    tags = key_values(tag)
    reference = None
    if code:  # the checkout the command runs in (the script that runs is modelreg itself)
        reference, checkout = detect_code(Path.cwd())
        if checkout is not None and checkout.dirty:
            tags.setdefault("git.dirty", "true")
    kwargs: dict[str, Any] = {"exclude": (*DEFAULT_EXCLUDE, *exclude)} if exclude else {}
    with connect(url, token, progress=progress) as client:
        done = client.register_version(
            model,
            artifacts_dir=artifacts,
            artifacts_uri=uri,
            params=params,
            metrics=metrics or None,
            metrics_dataset=dataset,
            code=reference,
            dependencies=None,
            run=run,
            tags=tags,
            description=description,
            create_model=create,
            external=external,
            parallel=parallel,
            **kwargs,
        )
    output(done, as_json, lambda d: _registered(model, d, len(metrics)))


def _registered(model: str, done: RegisteredVersion, metrics: int) -> str:
    created = f" (created model {model})" if done.model_created else ""
    uploaded, total = done.uploaded, len(done.files)
    kept = total - len(uploaded)
    files = (
        f"; uploaded {len(uploaded)} of {total} files ({sum(f.size for f in uploaded):,} bytes)"
        + (f", {kept} stored already" if kept else "")
        if total
        else ""
    )
    return (
        f"registered {model} v{done.version}{created}: {receipt_line(done.receipt)}"
        + (f"; {metrics} metrics logged" if metrics else "")
        + files
    )


def parse_ref(text: str) -> tuple[str, str | None]:
    """``churn@champion`` -> ("churn", "@champion"), ``churn/3`` -> ("churn", "3"),
    ``churn:production`` -> ("churn", "stage:production"), ``churn`` -> ("churn", None):
    the latest version. Model names hold none of ``@ / :``, so the split is unambiguous."""
    for mark, prefix in (("@", "@"), ("/", ""), (":", "stage:")):
        model, found, ref = text.partition(mark)
        if found:
            if not model or not ref:
                break
            return model, prefix + ref
    else:
        return text, None
    raise typer.BadParameter(
        f"{text!r}: expected MODEL, MODEL/VERSION, MODEL@ALIAS or MODEL:STAGE", param_hint="REF"
    )


@app.command("download")
@client_command
def download(
    ref: Annotated[
        str,
        typer.Argument(
            help="MODEL/VERSION (churn/3), MODEL@ALIAS (churn@champion), MODEL:STAGE "
            "(churn:production: the highest version in it) or MODEL (its latest version).",
            show_default=False,
        ),
    ],
    dest: Annotated[
        Path,
        typer.Argument(help="Directory to write the files into.", show_default=False),
    ],
    parallel: Annotated[
        int, typer.Option("--parallel", min=1, max=64, help="Files downloaded at once.")
    ] = 4,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bar on stderr (default: for large versions on a terminal).",
            show_default=False,
        ),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Download a version's files into a directory: each checked against its sha256 and
    size, written under a temporary name and renamed when complete, resumed where an
    interrupted download stopped. Files already there with the right digest are kept.
    External files (the registry holds no copy) are listed, not fetched.

    Examples:

        modelreg versions download churn@champion ./model

        modelreg versions download churn:production ./model --json
    """
    model, version = parse_ref(ref)
    with connect(url, token, progress=progress) as client:
        if version is None:
            latest = client.get_model(model).latest_version
            if latest is None:
                fail(f"model {model!r} has no version yet", EXIT_REFUSED)
            version = str(latest)
        done = client.download(model, version, dest, parallel=parallel)
    output(done, as_json, _downloaded)


def _downloaded(done: Downloaded) -> Group:
    grid = table("file", "size", "sha256", "", title=f"{done.model} v{done.version} -> {done.dest}")
    for f in done.files:
        grid.add_row(f.path, f"{f.size:,}", f.sha256[:16], f.action)
    parts: list[RenderableType] = [grid]
    if done.external:
        outside = table("external file", "uri", title="not downloaded: the registry holds no copy")
        for e in done.external:
            outside.add_row(e.path, e.uri)
        parts.append(outside)
    fetched = done.downloaded
    parts.append(
        f"{len(fetched)} of {len(done.files)} files downloaded "
        f"({sum(f.size for f in fetched):,} bytes), every one verified"
    )
    return Group(*parts)


@app.command("transition")
@client_command
def transition(
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
    """Move a version to a stage (``modelreg stage``); when the policy needs approval, open a
    promotion request.

    Examples:

        modelreg versions transition churn 8 production --env eu -m "eu first"

        modelreg versions transition churn 2 staging
    """
    lifecycle.transition(model, version, to, comment, env, url, token, as_json)


@app.command("deprecate")
@client_command
def deprecate(
    model: ModelArg,
    version: VersionArg,
    reason: Annotated[
        str, typer.Option("--reason", "-m", help="Why (required).", show_default=False)
    ],
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Mark a version deprecated (it stays readable; promotions of it are refused).

    Example: modelreg versions deprecate churn 2 -m "trained on leaked labels"
    """
    with connect(url, token) as client:
        receipt = client.deprecate_version(model, version, reason)
    output(receipt, as_json, lambda r: f"deprecated {model} v{version}: {receipt_line(r)}")
