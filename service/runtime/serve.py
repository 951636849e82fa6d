"""Process orchestration for ``modelreg serve`` and ``modelreg migrate``. I/O: everything.

``serve`` binds the HTTP port first (so "in use" fails fast), takes the data-dir lock and
starts embedded NATS and Postgres when no URL is configured, then runs in one event loop:
migrations, the asyncpg pool, a NATS connection that retries forever in the background,
the background workers for the role (each supervised and restarted after a crash), and
uvicorn. SIGINT/SIGTERM stop all of it in reverse order; a second signal forces.

Later issues plug in: background workers in ``background_workers()``; API routers in
``service.api.app.api_route_handlers()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import uvicorn
from nats.aio.client import Client as NatsClient

from eventlog.db import connect, create_pool
from eventlog.freshness import views_channel
from eventlog.listener import Listener
from eventlog.migrate import MigrationError, apply_migrations, pending_migrations
from eventlog.positions import SealSignal
from eventlog.sealer import Sealer, sealed_channel
from projections.registry_state import REGISTRY_PROJECTIONS, all_projections
from projections.runner import ProjectionWorker
from projections.snapshot_worker import SnapshotWorker
from service.api.app import AppState, create_app
from service.api.services import Services
from service.commands.expiry import expire_overdue_forever
from service.commands.token_secrets import Pepper, PepperError, check_pepper, load_pepper
from service.commands.tokens import ensure_bootstrap_token, warn_legacy_tokens
from service.publication.checkpointer import checkpointer_for
from service.publication.relay import relay_for
from service.runtime.composition import build_services
from service.runtime.embedded import DataDirLock, EmbeddedNats, EmbeddedPostgres
from service.runtime.http_limits import HttpLimits, protocol_for
from service.runtime.nats_auth import NatsNames
from service.runtime.worker_process import WorkerProcess, WorkerProcessError
from service.settings import Settings, SettingsError
from service.webhooks.configure import webhook_dispatcher

log = logging.getLogger("modelreg")
T = TypeVar("T")

SHUTDOWN_TIMEOUT = 10.0
EXIT_OK = 0
EXIT_FORCED = 130


class StartupError(RuntimeError):
    """A dependency or resource is unusable at start-up; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Worker:
    """A long-running background loop. ``run`` is called again for every restart."""

    name: str
    run: Callable[[], Awaitable[None]]


def background_workers(state: AppState) -> list[Worker]:
    """The loops that run beside the API in roles ``all`` and ``worker``.

    The sealer, the projection worker, the view snapshots, the NATS relay, the checkpointer
    and the webhook dispatcher are singletons, so extra replicas are hot standbys; the
    expiry sweeper is harmless to run twice.
    """
    settings = state.settings
    projections = ProjectionWorker(
        # Views are derived and replayable: a lost commit loses a batch and its checkpoint
        # together, so they need not wait for the WAL flush.
        _connector(state, "modelreg-projections", synchronous_commit=False),
        settings.db_schema,
        all_projections(),
        channel=sealed_channel(settings.db_schema),
        poll_interval=settings.worker_poll_interval,
    )
    snapshots = SnapshotWorker(
        # Snapshots are derived too: a lost commit is a snapshot taken again.
        _connector(state, "modelreg-snapshots", synchronous_commit=False),
        settings.db_schema,
        REGISTRY_PROJECTIONS,
        every=settings.snapshot_every,
        keep=settings.snapshot_keep,
        thin=settings.snapshot_thin,
        rows_per_event=settings.snapshot_rows_per_event or None,
        # From the live views when they stand between two snapshot positions; polled often
        # enough that, under load, one snapshot at a time falls due.
        live=True,
        poll_interval=settings.worker_poll_interval / 2,
    )
    relay = relay_for(settings, state.database_url, state.nats_url)
    checkpointer = checkpointer_for(
        settings, _connector(state, "modelreg-checkpointer"), state.nats_url
    )

    def webhooks() -> Awaitable[None]:
        # Built when it runs (each restart starts afresh): it needs the services' pepper.
        connect_webhooks = _connector(state, "modelreg-webhooks")
        return webhook_dispatcher(
            settings, state.pool, state.services.pepper, connect_webhooks
        ).run()

    return [
        *([Worker("sealer", state.sealer.run)] if settings.sealer else []),
        Worker("projections", projections.run),
        Worker("view-snapshots", snapshots.run),
        Worker("relay", relay.run),
        Worker("checkpointer", checkpointer.run),
        Worker("webhooks", webhooks),
        Worker(
            "promotion-expiry",
            lambda: expire_overdue_forever(state.services, settings.worker_poll_interval * 20),
        ),
    ]


def api_workers(state: AppState) -> list[Worker]:
    """The loops that run beside the API in roles ``all`` and ``api``: the seal listener
    wakes this process's writes waiting for their log position, wherever the sealer runs;
    the views listener wakes its reads waiting for the views to catch up; the token listener lets authentication answer from memory (``TokenAuthenticator``), and
    the subject listener lets answers name people from memory (``SubjectDirectory``)."""
    listener = Listener(
        _connector(state, "modelreg-seal"),
        sealed_channel(state.settings.db_schema),
        state.seal_signal.notify,
    )
    # Tokens are answered from memory only while this LISTEN hears of every token change.
    tokens = state.services.auth.tokens.listen(
        _connector(state, "modelreg-tokens"), state.settings.db_schema
    )
    # Reads waiting for the views look again when a checkpoint moves, not on a timer.
    views = Listener(
        _connector(state, "modelreg-views"),
        views_channel(state.settings.db_schema),
        state.services.views_bell.notify,
    )
    state.services.views_bell.hear(views)
    workers = [
        Worker("seal-listener", listener.run),
        Worker("views-listener", views.run),
        Worker("token-listener", tokens.run),
        Worker("denials", state.services.denials.run),
    ]
    subjects = state.services.executor.subjects
    if subjects is not None:
        # Names are answered from memory only while this LISTEN hears of every erasure.
        names = subjects.listen(_connector(state, "modelreg-subjects"), state.settings.db_schema)
        workers.append(Worker("subject-listener", names.run))
    return workers


def _connector(
    state: AppState, name: str, *, synchronous_commit: bool = True
) -> Callable[[], Awaitable[asyncpg.Connection]]:
    settings = state.settings

    async def connect_once() -> asyncpg.Connection:
        return await connect(
            state.database_url,
            schema=settings.db_schema,
            app_role=settings.db_app_role,
            name=name,
            synchronous_commit=synchronous_commit,
        )

    return connect_once


# ---------------------------------------------------------------- synchronous entry points


def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; return the exit code. Raises StartupError or
    EmbeddedServerError (one-line messages) when it cannot start."""
    started = time.monotonic()
    gate = _SignalGate()
    with gate.installed(), contextlib.ExitStack() as stack:
        sock = bind_http(settings.host, settings.port)
        stack.callback(sock.close)
        try:
            database_url, nats_url = _start_embedded(settings, stack, nats=True)
            assert nats_url is not None
            run_loop(_serve(settings, database_url, nats_url, sock, gate, started))
        except (KeyboardInterrupt, asyncio.CancelledError):
            log.info("interrupted; stopping what was started")
    log.info("stopped")
    return EXIT_FORCED if gate.forced else EXIT_OK


def migrate(settings: Settings) -> list[str]:
    """Apply pending migrations (starting embedded Postgres if no URL); return their names."""
    with _SignalGate().installed(), contextlib.ExitStack() as stack:
        database_url, _ = _start_embedded(settings, stack, nats=False)
        return run_loop(_migrate(settings, database_url))


def bind_http(host: str, port: int) -> socket.socket:
    """Bind and listen now, before anything slow starts, and hand the socket to uvicorn."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise StartupError(f"MODELREG_HOST {host!r} does not resolve: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        # Listen at once: on Linux another SO_REUSEADDR socket could still bind a port that
        # is bound but not listening.
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"HTTP port {port} on {host} is already in use; stop what uses it or set MODELREG_PORT"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _start_embedded(
    settings: Settings, stack: contextlib.ExitStack, *, nats: bool
) -> tuple[str, str | None]:
    database_url, nats_url = settings.database_url, settings.nats_url if nats else None
    embedded_nats = nats and nats_url is None
    if database_url is None or embedded_nats:
        stack.enter_context(DataDirLock(settings.data_dir))
    # NATS first: it starts in milliseconds and a port clash should not wait for initdb.
    if embedded_nats:
        server = EmbeddedNats(
            settings.data_dir,
            port=settings.nats_port,
            names=NatsNames(
                events_stream=settings.nats_stream,
                events_prefix=settings.nats_subject_prefix,
                checkpoint_stream=settings.checkpoint_stream,
                checkpoint_prefix=settings.checkpoint_subject_prefix,
            ),
        )
        stack.callback(_timed_stop, "embedded NATS", server)
        t0 = time.monotonic()
        server.start()
        nats_url = server.service_url
        log.info(
            "embedded NATS %s (JetStream in %s) up in %.2f s",
            server.url,
            server.store_dir,
            time.monotonic() - t0,
        )
    if database_url is None:
        postgres = EmbeddedPostgres(settings.data_dir)
        stack.callback(_timed_stop, "embedded Postgres", postgres)
        t0 = time.monotonic()
        database_url = postgres.start()
        log.info("embedded Postgres (%s) up in %.2f s", postgres.pgdata, time.monotonic() - t0)
    return database_url, nats_url


def _timed_stop(name: str, server: EmbeddedNats | EmbeddedPostgres) -> None:
    was_running, t0 = server.pid is not None, time.monotonic()
    server.stop()
    if was_running:
        log.info("%s stopped in %.2f s", name, time.monotonic() - t0)


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it on Linux and macOS
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


class _SignalGate:
    """SIGINT/SIGTERM policy for the whole process.

    Outside the event loop a signal raises KeyboardInterrupt, so ``with`` blocks unwind and
    stop what they started. Inside, the loop's callback decides (graceful stop, then force).
    A KeyboardInterrupt raised while a child is being stopped makes that stop a kill.
    """

    def __init__(self) -> None:
        self.count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callback: Callable[[int], None] | None = None

    @property
    def forced(self) -> bool:
        return self.count > 1

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        # A signal ignored by whoever started us (a background job's SIGINT) stays ignored.
        previous = {
            sig: signal.signal(sig, self._handle)
            for sig in (signal.SIGINT, signal.SIGTERM)
            if signal.getsignal(sig) is not signal.SIG_IGN
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def attach(self, loop: asyncio.AbstractEventLoop, callback: Callable[[int], None]) -> None:
        self._loop, self._callback = loop, callback

    def detach(self) -> None:
        self._loop = self._callback = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        log.info(
            "received %s%s", signal.Signals(signum).name, " again: forcing" if self.forced else ""
        )
        if self._loop is not None and self._callback is not None:
            self._loop.call_soon_threadsafe(self._callback, self.count)
        else:
            raise KeyboardInterrupt


# ---------------------------------------------------------------- the event loop


@contextlib.asynccontextmanager
async def open_state(
    settings: Settings, database_url: str, nats_url: str, *, bootstrap: bool = True
) -> AsyncIterator[AppState]:
    """Migrate, open the pool and start connecting to NATS; close both on exit.

    NATS being down does not block start-up: the client keeps retrying and readiness
    reports it. Postgres being down does: it raises StartupError.
    """
    if await _pending(settings, database_url):
        applied = await _migrate(settings, database_url)
        log.info("migrations applied: %s", ", ".join(applied) or "none (applied concurrently)")
    else:
        # Nothing to do, so no owner rights needed: a deployment can give serving
        # processes the application role only and migrate from an init step.
        log.info("schema up to date")
    try:
        pool = await create_pool(
            database_url,
            schema=settings.db_schema,
            app_role=settings.db_app_role,
            min_size=2,
            max_size=settings.db_pool_size,
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StartupError(
            f"cannot open a pool to Postgres at {redact(database_url)}: {exc}"
        ) from None
    nats = NatsClient()
    connector = asyncio.create_task(_connect_nats(nats, nats_url), name="nats-connect")
    connector.add_done_callback(_report_connector_failure)

    async def connect_sealer() -> asyncpg.Connection:
        return await connect(
            database_url,
            schema=settings.db_schema,
            app_role=settings.db_app_role,
            name="modelreg-sealer",
        )

    # Local appends wake the local sealer (appends of other replicas are found by polling);
    # the local sealer hands the positions it committed to `sealed`, and the seal listener
    # (api_workers) rings it for seals made by a sealer elsewhere.
    sealed = SealSignal()
    sealer = Sealer(
        connect_sealer,
        settings.db_schema,
        idle_interval=settings.sealer_idle_interval,
        on_sealed=sealed.sealed,
    )
    try:
        pepper = _pepper(settings)
        try:
            services = build_services(
                settings,
                pool,
                pepper=pepper,
                nats=nats,
                on_append=lambda _: sealer.wake(),
                seal_signal=sealed,
            )
        except SettingsError as exc:
            raise StartupError(str(exc)) from None
        if bootstrap:  # once, by the process that serves (not its worker child)
            await _bootstrap(services)
        yield AppState(
            settings=settings,
            database_url=database_url,
            nats_url=nats_url,
            pool=pool,
            nats=nats,
            services=services,
            sealer=sealer,
            seal_signal=sealed,
        )
    finally:
        connector.cancel()
        # A client that never reached a server has nothing to close (and nats-py asserts).
        if nats.is_connected or nats.is_reconnecting or nats.is_connecting:
            await _bounded("close NATS", nats.close(), timeout=5.0)
        if not await _bounded("close the pool", pool.close(), timeout=SHUTDOWN_TIMEOUT):
            pool.terminate()


def _pepper(settings: Settings) -> Pepper:
    try:
        return load_pepper(settings.token_pepper, settings.data_dir)
    except PepperError as exc:
        raise StartupError(str(exc)) from None


async def _bootstrap(services: Services) -> None:
    """Check the token pepper; on first start create the admin token and show a generated
    secret exactly once; on every start name the tokens still verified by an unkeyed hash."""
    try:
        await check_pepper(services.pool, services.pepper)
        secret = await ensure_bootstrap_token(
            services.executor, services.pepper, services.settings.bootstrap_token
        )
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    await warn_legacy_tokens(services.executor)
    if secret is not None and services.settings.bootstrap_token is None:
        banner = "=" * 72
        print(  # noqa: T201 - shown once to the operator, by design never logged
            f"\n{banner}\n  First start: an admin token was created. It is shown only now.\n\n"
            f"    export MODELREG_TOKEN={secret}\n\n"
            f"  Use it as 'Authorization: Bearer <token>' and create tokens for people\n"
            f"  with POST /api/v1/tokens. Revoke it with DELETE /api/v1/tokens/bootstrap.\n{banner}\n",
            file=sys.stderr,
            flush=True,
        )
    elif secret is not None:
        log.info("first start: the admin token from MODELREG_BOOTSTRAP_TOKEN was registered")


async def _serve(
    settings: Settings,
    database_url: str,
    nats_url: str,
    sock: socket.socket,
    gate: _SignalGate,
    started: float,
) -> None:
    main = asyncio.current_task()
    assert main is not None
    server: _Server | None = None
    state: AppState | None = None
    workers: list[asyncio.Task[None]] = []

    def on_signal(count: int) -> None:
        if server is None:
            main.cancel()  # still starting: abandon start-up, unwind what exists
        elif count == 1:
            server.should_exit = True
        else:
            # Forced: stop waiting for requests, workers or a pool that will not drain.
            server.force_exit = True
            for task in workers:
                task.cancel()
            if state is not None:
                state.pool.terminate()

    gate.attach(asyncio.get_running_loop(), on_signal)
    child: WorkerProcess | None = None
    try:
        if settings.role == "all" and settings.worker_process:
            # Started first, so that it imports and connects while this process does: the
            # two start-ups overlap (migrations take a lock; the child does not bootstrap).
            child = WorkerProcess(settings, database_url, nats_url)
            await child.spawn()
        async with open_state(settings, database_url, nats_url) as opened:
            state = opened
            loops = await _loops_for(settings, state, child)
            workers = [asyncio.create_task(supervise(w), name=f"worker:{w.name}") for w in loops]
            # Everything loaded so far lives as long as the process: keep it out of the
            # collector's way, or full collections pause requests for ~100 ms every few dozen.
            gc.freeze()
            config = uvicorn.Config(
                create_app(
                    state, api=settings.role != "worker", debug=settings.log_level == "debug"
                ),
                lifespan="on",
                log_config=None,
                log_level=settings.log_level,
                ws="none",
                # Header size and count, head/body/idle timeouts, connection bound.
                http=protocol_for(HttpLimits.of(settings)),
                limit_concurrency=settings.http_max_connections,
                access_log=settings.log_level == "debug",
                timeout_graceful_shutdown=int(SHUTDOWN_TIMEOUT),
            )
            server = _Server(
                config, on_started=lambda: _log_serving(settings, sock, len(workers), started)
            )
            try:
                await server.serve(sockets=[sock])
            finally:
                await stop_workers(workers)
    finally:
        if child is not None:  # start-up failed or was interrupted before its worker ran
            await child.stop()
        gate.detach()


async def _loops_for(
    settings: Settings, state: AppState, child: WorkerProcess | None
) -> list[Worker]:
    """The loops this process runs beside (or, role worker, instead of) the API; with a
    worker child, once the child's workers run."""
    loops: list[Worker] = []
    if child is not None:
        try:
            await child.ready()
        except WorkerProcessError as exc:
            raise StartupError(str(exc)) from None
        if settings.sealer:
            loops.append(Worker("sealer", state.sealer.run))
        loops.append(Worker("worker-process", child.run))
    elif settings.role != "api":
        loops += background_workers(state)
    if settings.role != "worker":
        loops += api_workers(state)
    return loops


class _Server(uvicorn.Server):
    """uvicorn, minus its own signal handling: the runtime owns signals for the process."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self._on_started()


def _log_serving(settings: Settings, sock: socket.socket, workers: int, started: float) -> None:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "serving http://%s:%d (role %s, %d background workers) %.2f s after start; Ctrl-C stops",
        shown,
        port,
        settings.role,
        workers,
        time.monotonic() - started,
    )


async def _pending(settings: Settings, database_url: str) -> list[str]:
    try:
        conn = await connect(database_url, schema=settings.db_schema, app_role=settings.db_app_role)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if isinstance(exc, asyncpg.PostgresError) and "role" in str(exc):
            return ["(the application role does not exist yet)"]
        raise StartupError(f"cannot connect to Postgres at {redact(database_url)}: {exc}") from None
    try:
        return await pending_migrations(conn)
    except asyncpg.PostgresError:
        return ["(the schema is not readable yet)"]
    finally:
        await conn.close()


async def _migrate(settings: Settings, database_url: str) -> list[str]:
    try:
        return await apply_migrations(
            database_url, schema=settings.db_schema, app_role=settings.db_app_role
        )
    except MigrationError as exc:
        raise StartupError(f"migration failed: {exc}") from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StartupError(f"cannot connect to Postgres at {redact(database_url)}: {exc}") from None


def _report_connector_failure(task: asyncio.Task[None]) -> None:
    # It retries forever, so it only ends in error on something like a malformed URL;
    # say so, or the service would just stay unready with no hint why.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("NATS: gave up connecting: %s", str(exc) or type(exc).__name__)


async def _connect_nats(nats: NatsClient, url: str) -> None:
    shown = redact(url)
    down = False

    async def on_error(exc: Exception) -> None:
        nonlocal down
        # One warning per outage; the retries every few seconds go to debug.
        (log.debug if down else log.warning)(
            "NATS %s unavailable (retrying): %s", shown, str(exc) or type(exc).__name__
        )
        down = True

    async def on_disconnected() -> None:
        if not nats.is_closed:  # closed on purpose at shutdown
            log.warning("NATS %s disconnected; reconnecting", shown)

    async def on_reconnected() -> None:
        nonlocal down
        down = False
        log.info("NATS %s reconnected", shown)

    await nats.connect(
        # A cluster may be given as a comma-separated list of server URLs.
        servers=[part.strip() for part in url.split(",") if part.strip()],
        name="modelreg",
        connect_timeout=2,
        reconnect_time_wait=2,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
    down = False
    log.info("NATS connected: %s", shown)


async def supervise(
    worker: Worker,
    *,
    first_delay: float = 0.5,
    max_delay: float = 30.0,
    healthy_after: float = 60.0,
) -> None:
    """Run ``worker`` until cancelled. A crash (or an unexpected return) is logged and the
    worker restarted after a delay that doubles up to ``max_delay`` and resets once a run
    lasted ``healthy_after`` seconds. A worker never takes the API down with it."""
    loop = asyncio.get_running_loop()
    delay = first_delay
    while True:
        began = loop.time()
        try:
            await worker.run()
            outcome = "returned"
        except Exception:
            log.exception("worker %s crashed", worker.name)
            outcome = "crashed"
        if loop.time() - began >= healthy_after:
            delay = first_delay
        log.warning("worker %s %s; restarting in %.1f s", worker.name, outcome, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)


async def stop_workers(workers: list[asyncio.Task[None]]) -> None:
    for task in workers:
        task.cancel()
    if workers:
        _, pending = await asyncio.wait(workers, timeout=SHUTDOWN_TIMEOUT)
        for task in pending:
            log.error(
                "worker task %s ignored cancellation for %.0f s; abandoning it",
                task.get_name(),
                SHUTDOWN_TIMEOUT,
            )


async def _bounded(what: str, step: Awaitable[None], *, timeout: float) -> bool:
    try:
        await asyncio.wait_for(step, timeout)
    except TimeoutError:
        log.warning("%s took over %.0f s; giving up", what, timeout)
        return False
    except Exception:
        log.exception("%s failed", what)
        return False
    return True


def redact(url: str) -> str:
    """The URL (or comma-separated URLs, as NATS takes them) without passwords, for
    messages and logs."""
    if "," in url:
        return ",".join(redact(part) for part in url.split(","))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
