"""``modelreg metrics``: log points (from arguments or a file, in batches), show a
version's metrics, compare versions. I/O: the registry's HTTP API, local files; exit
codes as in ``service.cli.shared``."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from service.cli.help import command_group
from service.cli.output import console, number, output, table, when
from service.cli.shared import (
    JsonOption,
    ModelArg,
    TokenOption,
    UrlOption,
    VersionArg,
    client_command,
    connect,
    key_values,
)
from service.client.models import (
    Comparison,
    Metric,
    MetricSample,
    MetricSeries,
    MetricValue,
    Receipt,
)

app = command_group("Metrics: log points (batched), show a version's metrics, compare versions.")

BATCH = 1000


def read_points(source: Path, *, step: int, dataset: str | None) -> list[Metric]:
    """Points from JSON lines (``{"key": "loss", "value": 0.3, "step": 10}`` per line) or
    CSV with a header (``key,value[,step,dataset,timestamp]``); ``-`` reads stdin."""
    text = sys.stdin.read() if str(source) == "-" else source.read_text()
    rows: list[dict[str, Any]]
    if source.suffix.lower() == ".csv":
        rows = [dict(r) for r in csv.DictReader(io.StringIO(text))]
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(msgspec.json.decode(line))
                except msgspec.DecodeError as exc:
                    raise typer.BadParameter(f"line {n}: {exc}", param_hint="--file") from None
    found: list[Metric] = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise typer.BadParameter(
                f"row {n}: expected an object with key and value", param_hint="--file"
            )
        fields = {k: v for k, v in row.items() if v not in (None, "")}
        fields.setdefault("step", step)
        if dataset is not None:
            fields.setdefault("dataset", dataset)
        try:
            found.append(msgspec.convert(fields, Metric, strict=False))
        except msgspec.ValidationError as exc:
            raise typer.BadParameter(f"row {n}: {exc}", param_hint="--file") from None
    return found


@app.command("log")
@client_command
def log_metrics(
    model: ModelArg,
    version: VersionArg,
    values: Annotated[
        list[str] | None, typer.Argument(help="key=value pairs.", show_default=False)
    ] = None,
    step: Annotated[
        int,
        typer.Option(
            "--step", min=0, help="Step of the key=value points (and file rows without one)."
        ),
    ] = 0,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset the values were measured on.")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", help="JSON lines or .csv of points; '-' for stdin.", allow_dash=True
        ),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            show_default=False,
            help="Progress bar (default: for files, on a terminal).",
        ),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Log metric points, 1,000 per request.

    Examples:

        modelreg metrics log churn 3 auc=0.93 f1=0.71 --dataset holdout

        modelreg metrics log churn 3 --file train_log.jsonl
    """
    found: list[Metric] = []
    if file is not None:
        found.extend(read_points(file, step=step, dataset=dataset))
    for key, value in key_values(values).items():
        try:
            found.append(Metric(key=key, value=float(value), step=step, dataset=dataset))
        except ValueError:
            raise typer.BadParameter(f"{key}={value}: not a number") from None
    if not found:
        raise typer.BadParameter("give key=value pairs or --file")
    receipts: list[Receipt] = []
    show_bar = progress if progress is not None else (file is not None and sys.stderr.isatty())
    bar = Progress(
        TextColumn("logging"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console(stderr=True),
        transient=True,
        disable=not show_bar,
    )
    with connect(url, token, metrics_batch_size=BATCH) as client, bar:
        task = bar.add_task("points", total=len(found))
        for start in range(0, len(found), BATCH):
            chunk = found[start : start + BATCH]
            receipts.extend(client.log_metrics(model, version, chunk))
            receipts.extend(client.flush())
            bar.advance(task, len(chunk))
    last = receipts[-1].position if receipts else None
    output(
        {"points": len(found), "requests": len(receipts), "receipts": receipts},
        as_json,
        lambda _: (
            f"logged {len(found)} points to {model} v{version} in {len(receipts)} request"
            f"{'s' if len(receipts) != 1 else ''} (log position {last})"
        ),
    )


@app.command("show")
@client_command
def show_metrics(
    model: ModelArg,
    version: VersionArg,
    key: Annotated[
        str | None,
        typer.Option(
            "--key", "-k", help="Show this metric's history instead of the latest values."
        ),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="With --key: this dataset only.")
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit", "-n", min=1, max=100_000, help="With --key: at most this many points."
        ),
    ] = 1000,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="As it stood at a log position or time.")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """The latest value of each metric of a version, or one metric's history by step.

    Examples:

        modelreg metrics show churn 3

        modelreg metrics show churn 3 --key loss --json | jq '.[].value'
    """
    with connect(url, token) as client:
        if key is None:
            latest = client.get_metrics(model, version, as_of=as_of)
            series = {
                (s.key, s.dataset): s for s in client.metric_series(model, version, as_of=as_of)
            }
            output(latest, as_json, lambda rows: _latest(rows, series))
            return
        samples: list[MetricSample] = []
        cursor = None
        while len(samples) < limit:
            page = client.metric_history(
                model,
                version,
                key,
                dataset=dataset,
                limit=min(10_000, limit - len(samples)),
                cursor=cursor,
                as_of=as_of,
            )
            samples.extend(page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    output(samples, as_json, lambda rows: _history(rows, key))


def _latest(latest: list[MetricValue], series: dict[tuple[str, str], MetricSeries]) -> Table:
    grid = table("metric", "dataset", "latest", "step", "points", "logged (UTC)")
    for m in latest:
        found = series.get((m.key, m.dataset))
        grid.add_row(
            m.key,
            m.dataset,
            number(m.value),
            str(m.step),
            str(found.points) if found else "",
            when(m.timestamp),
        )
    return grid


def _history(samples: list[MetricSample], key: str) -> Table:
    grid = table("step", "dataset", key, "logged (UTC)")
    for s in samples:
        grid.add_row(str(s.step), s.dataset, number(s.value), when(s.timestamp))
    return grid


@app.command("compare")
@client_command
def compare(
    model: ModelArg,
    versions: Annotated[
        list[int], typer.Argument(help="Two or more version numbers.", show_default=False)
    ],
    diff: Annotated[bool, typer.Option("--diff", help="Only rows whose values differ.")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Parameters and latest metrics of versions side by side (differences marked *).

    Example: modelreg metrics compare churn 2 3 4 --diff
    """
    with connect(url, token) as client:
        found = client.compare_versions(model, versions)
    missing = ", ".join(f"v{v}" for v in found.missing)
    output(
        found,
        as_json,
        lambda c: _comparison(c, only_differences=diff),
        remark=f"(no such versions: {missing})" if missing else None,
    )


def _comparison(found: Comparison, *, only_differences: bool) -> Table:
    diff = only_differences
    grid = table("", "", *(f"v{v}" for v in found.versions))
    for p in found.params:
        if p.differs or not diff:
            grid.add_row(
                "param",
                p.name + (" *" if p.differs else ""),
                *("" if v is None else str(v) for v in p.values),
            )
    for m in found.metrics:
        if m.differs or not diff:
            label = m.key + (f"[{m.dataset}]" if m.dataset else "") + (" *" if m.differs else "")
            grid.add_row("metric", label, *(number(v) for v in m.values))
    return grid
