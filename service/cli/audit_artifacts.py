"""``modelreg audit artifacts``: re-hash the stored model files, report missing, corrupt and
orphaned blobs, and (``--gc``) delete orphans older than a grace period.

    modelreg audit artifacts [--sample N] [--json] [--gc [--grace 7d]]

Runs on the server side like ``audit verify``: the database (``MODELREG_DATABASE_URL``,
else the embedded one) and the blob store the server uses (``MODELREG_ARTIFACTS_URL``,
else the data dir). Exit codes: 0 nothing missing or corrupt (orphans are listed, not
wrong), 1 a blob is missing or corrupt, 2 cannot start (no database, store unreachable,
bad option).
"""

from __future__ import annotations

import getpass
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from rich.console import Group, RenderableType
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from eventlog.store import EventStore
from events.catalogue import CODEC
from service.artifacts.audit import CORRUPT, MISSING, ORPHAN, AuditReport, audit_blobs, read_ledger
from service.artifacts.blobstore import BlobStoreUnavailableError
from service.artifacts.collect import collect
from service.artifacts.configure import blob_store_from
from service.artifacts.inventory import inventory_of
from service.cli.database import fail, run_with_pool
from service.cli.output import console, fields, output, table
from service.commands.executor import CommandExecutor
from service.identity.subjects import SubjectDirectory
from service.settings import Settings, SettingsError, load_settings

EXIT_FOUND = 1
ACTOR = "modelreg-gc"
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SHOWN = 50


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``7d``, ``2w`` (one number and unit)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise fail(f"--grace {text!r}: expected a number and a unit (s, m, h, d, w), e.g. 7d")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def artifacts_command(
    sample: Annotated[
        int | None,
        typer.Option("--sample", min=1, help="Re-hash this many blobs at random, not all."),
    ] = None,
    gc: Annotated[
        bool, typer.Option("--gc", help="Delete orphans (and upload leftovers) past --grace.")
    ] = False,
    grace: Annotated[
        str, typer.Option("--grace", help="How old an orphan must be to be deleted (s/m/h/d/w).")
    ] = "7d",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON for machines instead of tables.")
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help="Data dir of the local `modelreg serve` (env MODELREG_DATA_DIR)."
        ),
    ] = None,
) -> None:
    """Re-hash every stored model file and report missing, corrupt and orphaned blobs.

    Examples:

        modelreg audit artifacts

        modelreg audit artifacts --sample 100 --json

        modelreg audit artifacts --gc --grace 7d
    """
    period = parse_duration(grace)
    settings = _settings(data_dir)
    try:
        blobs = blob_store_from(settings)
    except SettingsError as exc:
        raise fail(str(exc)) from None
    inventory = inventory_of(blobs)

    async def work(pool: asyncpg.Pool) -> AuditReport:
        store = EventStore(pool, CODEC)
        executor = CommandExecutor(store, subjects=SubjectDirectory(pool))
        now = datetime.now(UTC)
        ledger = await read_ledger(store, executor)
        with _bar() as bar:
            task = bar.add_task("re-hashing blobs", total=None)
            report = await audit_blobs(
                ledger,
                blobs,
                inventory,
                now=now,
                sample=sample,
                listed=lambda _count, size: bar.update(task, total=size),
                progress=lambda _count, size: bar.update(task, completed=size),
            )
        if gc:
            await collect(report, store, executor, inventory, grace=period, now=now, actor=ACTOR)
        return report

    try:
        report = run_with_pool(settings, work)
    except BlobStoreUnavailableError as exc:
        raise fail(f"the blob store did not answer: {exc}") from None
    output(report, as_json, _human)
    if not report.ok:
        missing, corrupt = report.count(MISSING), report.count(CORRUPT)
        typer.echo(f"modelreg audit: {missing} missing and {corrupt} corrupt blob(s)", err=True)
        raise typer.Exit(EXIT_FOUND)


def _actor() -> str:
    """Who deleted: the collector and the operating-system user who ran it."""
    try:
        return f"{ACTOR}:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return ACTOR


def _human(report: AuditReport) -> RenderableType:
    summary = {
        "result": "ok" if report.ok else "PROBLEMS FOUND",
        "blobs held": f"{report.blobs_held:,} ({_size(report.bytes_held)})",
        "re-hashed": f"{report.blobs_checked:,} ({_size(report.bytes_checked)})"
        + (" sampled" if report.sampled else ""),
        "missing": str(report.count(MISSING)),
        "corrupt": str(report.count(CORRUPT)),
        "orphans": str(report.count(ORPHAN)),
        "upload leftovers": str(len(report.incoming)),
        "collected": str(len(report.collected)) if report.collected else "",
        "swept leftovers": str(len(report.swept)) if report.swept else "",
        "kept on a second look": "; ".join(report.kept),
    }
    parts: list[RenderableType] = [fields(None, summary)]
    if report.findings:
        listed = table("status", "digest", "size", "age", "referenced by", "detail")
        for f in report.findings[:_SHOWN]:
            listed.add_row(
                f.status,
                f.digest[:19] + "…",
                _size(f.size),
                _duration(f.age_seconds),
                ", ".join(f.referenced_by) or "-",
                f.detail,
            )
        parts.append(listed)
    return Group(*parts)


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds // length}{unit}"
    return f"{seconds}s"


def _settings(data_dir: Path | None) -> Settings:
    try:
        return load_settings(None, data_dir=str(data_dir) if data_dir else None)
    except SettingsError as exc:
        raise fail(str(exc)) from None


def _bar() -> Progress:
    """Bytes re-hashed, on stderr when it is a terminal; nothing otherwise."""
    stderr = console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )
