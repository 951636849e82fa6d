"""The background workers of role ``all`` in a child process. I/O: processes.

One Python process has one core's worth of CPU. Measured with ``bench.write_profile``, a
registering server spent 35-40% of that core folding projections and another tenth
relaying to NATS, on the same event loop that serves requests: a write's response waited
behind them. So role ``all`` starts its projections, view snapshots, relay,
checkpointer, webhook dispatcher and expiry sweeper in a child process (role ``worker``,
no sealer, no HTTP) and keeps the sealer beside the API, where a write's wait for its
seal is a hand-over in memory rather than a NOTIFY through Postgres.

Nothing correct depends on where the workers run: each of them leads through an advisory
lock and keeps its position in Postgres, exactly as when an operator runs ``--role
worker`` apart. The child is tied to its parent: it is told (parent-death signal) to stop
when the parent dies, even by ``kill -9``, and a child that dies is started again by the
parent's supervisor. ``MODELREG_WORKER_PROCESS=false`` keeps everything in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping

import msgspec

from service.runtime.children import death_signal_setter
from service.settings import PREFIX, Settings, load_settings

log = logging.getLogger(__name__)

READY = b"ready\n"


class WorkerProcessError(RuntimeError):
    """The child exited, or did not get ready in time."""


def child_environment(
    settings: Settings, database_url: str, nats_url: str, base: Mapping[str, str]
) -> dict[str, str]:
    """The child's environment: ``base`` without any ``MODELREG_*`` variable, then every
    setting of the parent (command-line options included) as one, with the servers the
    parent reached (embedded ones too) and the child's own role. Pure."""
    env = {k: v for k, v in base.items() if not k.startswith(PREFIX)}
    values = msgspec.structs.asdict(settings)
    values.update(
        database_url=database_url,
        nats_url=nats_url,
        role="worker",
        sealer=False,
        worker_process=False,
    )
    for name, value in values.items():
        if value is None:
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[f"{PREFIX}{name.upper()}"] = text
    return env


class WorkerProcess:
    """The parent's handle on its worker child: start it (and wait until its workers run),
    watch it, stop it."""

    def __init__(
        self,
        settings: Settings,
        database_url: str,
        nats_url: str,
        *,
        ready_timeout: float = 120.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.nats_url = nats_url
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    async def start(self) -> None:
        """Start the child and return once its workers run; raise WorkerProcessError if it
        exits first or takes longer than ``ready_timeout``."""
        await self.spawn()
        await self.ready()

    async def spawn(self) -> None:
        """Start the child (``ready`` waits for its workers to run)."""
        env = child_environment(self.settings, self.database_url, self.nats_url, os.environ)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service.runtime.worker_process",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,  # one line: READY
            env=env,
            # Its own session: a terminal's Ctrl-C reaches the parent, which stops it in
            # order after the API has drained.
            start_new_session=True,
            preexec_fn=death_signal_setter(signal.SIGTERM),
        )

    async def ready(self) -> None:
        """Return once the spawned child's workers run; raise WorkerProcessError if it exits
        first or takes longer than ``ready_timeout`` (then it is stopped)."""
        process = self.process
        assert process is not None
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), self.ready_timeout)
        except TimeoutError:
            await self.stop()
            raise WorkerProcessError(
                f"the worker process did not get ready within {self.ready_timeout:.0f} s"
            ) from None
        except BaseException:  # cancelled while starting (Ctrl-C): leave no child behind
            await asyncio.shield(self.stop())
            raise
        if line != READY:
            code = await process.wait()
            raise WorkerProcessError(f"the worker process exited with code {code} while starting")
        log.info("worker process %d runs the background workers", process.pid)

    async def run(self) -> None:
        """Watch the child (starting it if needed) until it exits, which is an error for the
        supervisor to restart; cancelled, stop it first."""
        try:
            if self.process is None or self.process.returncode is not None:
                await self.start()
            assert self.process is not None
            code = await self.process.wait()
            self.process = None
            raise WorkerProcessError(f"the worker process exited with code {code}")
        except asyncio.CancelledError:
            await asyncio.shield(self.stop())
            raise

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout``."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.stop_timeout)
        except TimeoutError:
            log.warning(
                "worker process %d ignored SIGTERM for %.0f s; killing it",
                process.pid,
                self.stop_timeout,
            )
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


# ---------------------------------------------------------------- the child's side


async def _work(settings: Settings, stopping: asyncio.Event) -> None:
    # Imported here: serve imports this module for the parent's side.
    from service.runtime.serve import background_workers, open_state, stop_workers, supervise

    assert settings.database_url is not None
    assert settings.nats_url is not None
    async with open_state(
        settings, settings.database_url, settings.nats_url, bootstrap=False
    ) as state:
        workers = [
            asyncio.create_task(supervise(w), name=f"worker:{w.name}")
            for w in background_workers(state)
        ]
        os.write(sys.stdout.fileno(), READY)
        try:
            await stopping.wait()
        finally:
            await stop_workers(workers)


def main() -> int:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)-7s [worker process] %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    from service.runtime.serve import run_loop

    async def until_signalled() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await _work(settings, stopping)

    run_loop(until_signalled())
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
