"""``modelreg deploy-agent``: run the reference deployment agent (``service.consumers.deploy_agent``).

    modelreg deploy-agent --out manifests/ [--environment prod] [--target k8s/serving]
                          [--alias champion]... [--model NAME]... [--once]

Reads events from NATS (``--nats-url``/``MODELREG_NATS_URL``, else the embedded NATS of a
running ``modelreg serve`` found through the data dir: ``service.cli.nats_connection``;
stream and subject prefix from the usual settings) and talks to the registry over HTTP
(``--url``/``MODELREG_URL``,
``--token``/``MODELREG_TOKEN``): it needs no database access. Prints one line per
deployment it handled on stdout. Exit codes: 0 stopped by Ctrl-C/SIGTERM, or done
(``--once``); 1 ``--once`` lost NATS on the way; 2 cannot start (bad option, NATS or the
registry unreachable, token refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, NoReturn

import nats
import nats.errors
import typer

from events.errors import ValidationError
from service.cli.nats_connection import CannotStartError, connect_nats, require_stream
from service.cli.nats_connection import nats_url as resolve_nats_url
from service.cli.shared import TokenOption, UrlOption
from service.client import AsyncClient, ConfigurationError, ModelregError
from service.consumers.deploy_agent import AgentConfig, DeployAgent, Outcome, run_agent
from service.consumers.kit import FileDedup, PullInterruptedError
from service.settings import SettingsError, load_settings

EXIT_FAILED = 1
EXIT_CANNOT_START = 2


def deploy_agent(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Directory the InferenceService manifests are written to.",
            show_default=False,
        ),
    ],
    environment: Annotated[
        str, typer.Option(help="The environment deployments are recorded in.")
    ] = "prod",
    target: Annotated[
        str,
        typer.Option(help="The target for the production stage; an alias deploys to TARGET/ALIAS."),
    ] = "k8s/serving",
    alias: Annotated[
        list[str] | None,
        typer.Option(
            "--alias",
            help="Also deploy when this alias moves (repeatable), e.g. a protected alias.",
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Only these models (repeatable; default: all)."),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option(help="metadata.namespace of the manifests (default: none).")
    ] = None,
    model_format: Annotated[
        str | None,
        typer.Option(
            "--model-format",
            help="modelFormat.name when the version has no model_format tag, e.g. sklearn.",
        ),
    ] = None,
    storage_uri_from: Annotated[
        str,
        typer.Option(
            "--storage-uri-from",
            help="'artifacts' (stored files: the registry's download URL; external ones: the"
            " prefix their URIs share), 'blobs' (a one-file version's blob in the S3 store)"
            " or 'tag:KEY' (a version tag).",
        ),
    ] = "artifacts",
    registry_url: Annotated[
        str | None,
        typer.Option(
            "--registry-url",
            envvar="MODELREG_PUBLIC_URL",
            help="The registry as the cluster reaches it, for stored files (default: --url).",
        ),
    ] = None,
    durable: Annotated[
        str | None, typer.Option(help="Durable consumer name (default deploy-agent-ENVIRONMENT).")
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(help="De-duplication file (default OUT/.deploy-agent-DURABLE.seen)."),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Handle what is there, then exit (for cron and tests).")
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    nats_url: Annotated[
        str | None,
        typer.Option(
            "--nats-url",
            envvar="MODELREG_NATS_URL",
            help="NATS to read events from (default: the running `modelreg serve`'s).",
        ),
    ] = None,
    stream: Annotated[
        str | None,
        typer.Option(
            envvar="MODELREG_NATS_STREAM", help="JetStream stream (default MODELREG_EVENTS)."
        ),
    ] = None,
    subject_prefix: Annotated[
        str | None,
        typer.Option(
            envvar="MODELREG_NATS_SUBJECT_PREFIX", help="Subject prefix (default modelreg.events)."
        ),
    ] = None,
) -> None:
    """Render a KServe InferenceService for every promotion to production (and every move of
    the given aliases) and record the deployment's outcome in the registry."""
    try:
        settings = load_settings()
        config = AgentConfig(
            out=out,
            environment=environment,
            target=target,
            aliases=frozenset(alias or ()),
            namespace=namespace,
            model_format=model_format,
            storage_uri_from=storage_uri_from,
            registry_url=registry_url or "",
            blobs_url=settings.artifacts_url or "",
        )
    except (SettingsError, ValidationError, ValueError) as exc:
        _fail(str(exc))
    name = durable or "deploy-agent-" + re.sub(r"[^A-Za-z0-9_-]+", "-", environment)
    seen = state or out / f".deploy-agent-{name}.seen"

    def show(outcome: Outcome) -> None:
        sys.stdout.write(outcome.line() + "\n")
        sys.stdout.flush()

    async def run(stop: asyncio.Event) -> None:
        try:
            client = AsyncClient(url, token)
        except ConfigurationError as exc:
            raise CannotStartError(
                str(exc).replace(
                    "pass token=... or set MODELREG_TOKEN", "set MODELREG_TOKEN or pass --token"
                )
            ) from None
        async with client:
            try:
                await client.whoami()  # a wrong URL or token fails now, not on the first promotion
                model_ids = [(await client.get_model(m)).model_id for m in model or ()]
            except ModelregError as exc:
                raise CannotStartError(f"registry at {client.url}: {exc}") from None
            # Stored files are fetched from the registry: by default at the agent's own URL.
            rendering = config if config.registry_url else replace(config, registry_url=client.url)
            agent = DeployAgent(client, rendering, on_outcome=show)
            subscription = agent.subscription(
                name,
                stream=stream or settings.nats_stream,
                subject_prefix=subject_prefix or settings.nats_subject_prefix,
                models=model_ids,
            )
            await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
            dedup = FileDedup(seen)
            server = resolve_nats_url(nats_url or settings.nats_url, settings.data_dir)
            nc = await connect_nats(server)
            try:
                await require_stream(nc, stream or settings.nats_stream, server)
                stats = await run_agent(nc, agent, subscription, dedup, stop, once=once)
            finally:
                dedup.close()
                await nc.close()
        count = {
            s: sum(o.status == s for o in agent.outcomes)
            for s in ("succeeded", "failed", "skipped", "recorded")
        }
        typer.echo(
            f"deploy-agent: {stats.handled} new events: {count['succeeded']} deployed, {count['failed']} failed, "
            f"{count['skipped']} superseded, {count['recorded']} already recorded, "
            f"{stats.handled - sum(count.values())} not for this agent; {stats.duplicates} duplicates, "
            f"{stats.dead_lettered} dead-lettered",
            err=True,
        )

    _run_until_stopped(run)


def _run_until_stopped(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``run(stop)`` until it returns or SIGINT/SIGTERM asks it to stop after the
    current batch (the kit acknowledges a batch only once all of it was handled)."""

    async def supervised() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await run(stop)

    try:
        asyncio.run(supervised())
    except CannotStartError as exc:
        _fail(str(exc))
    except (nats.errors.Error, OSError, TimeoutError, PullInterruptedError) as exc:
        # Only --once gets here: the long-running loop backs off and resumes by itself.
        _fail(f"stopped: {str(exc) or type(exc).__name__}", EXIT_FAILED)


def _fail(message: str, code: int = EXIT_CANNOT_START) -> NoReturn:
    typer.echo(f"modelreg deploy-agent: {message}", err=True)
    raise typer.Exit(code)
