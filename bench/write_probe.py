"""``modelreg serve`` with wall-clock timers around the phases of a write (for
``bench.write_profile``; never imported by the service).

Run as ``python -P bench/write_probe.py`` with the served checkout on ``PYTHONPATH``
(it imports nothing from ``bench``): it wraps a few methods in timers, then starts the
ordinary ``modelreg serve``. On SIGUSR1 it writes what it measured since the last SIGUSR1
to ``$MODELREG_PROBE_OUT`` (JSON: phase -> list of seconds) and starts afresh.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

_TIMES: defaultdict[str, list[float]] = defaultdict(list)


def _timed(owner: Any, name: str, label: str) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            _TIMES[label].append(time.perf_counter() - started)

    setattr(owner, name, wrapper)


def _install() -> None:
    from litestar import Litestar

    import service.commands.registry as registry
    from eventlog.sealer import Sealer
    from eventlog.store import EventStore
    from projections import runner
    from service.commands.executor import CommandExecutor
    from service.identity.signin import SignIn

    app_call = Litestar.__call__

    # Its own signature: uvicorn takes an app callable with no arguments for a factory.
    async def timed_call(self: Litestar, scope: Any, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        try:
            await app_call(self, scope, receive, send)
        finally:
            if scope["type"] == "http":
                _TIMES["request (ASGI app, all of it)"].append(time.perf_counter() - started)

    Litestar.__call__ = timed_call  # type: ignore[method-assign]
    _timed(SignIn, "authenticate", "authentication")
    _timed(registry.Registry, "model_id", "model name -> id")
    _timed(registry.Registry, "execute", "command: load, decide, append, wait for seal")
    _timed(CommandExecutor, "execute", "  load state, decide, append")
    _timed(EventStore, "append", "    append (INSERT, COMMIT)")
    _timed(registry, "sealed_position", "  wait for the seal (position)")
    _timed(Sealer, "seal_once", "sealer: one batch (background)")
    _timed(runner, "step", "projections: one step (background)")

    out = Path(os.environ["MODELREG_PROBE_OUT"])

    def dump(*_: object) -> None:
        snapshot = {k: list(v) for k, v in _TIMES.items()}
        _TIMES.clear()
        out.write_text(json.dumps(snapshot))

    signal.signal(signal.SIGUSR1, dump)


if __name__ == "__main__":
    _install()
    from service.cli.main import main

    sys.argv = ["modelreg", "serve"]
    main()
