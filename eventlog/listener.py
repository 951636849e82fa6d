"""A LISTEN kept up on a connection of its own, for the loops that the sealer's NOTIFY
wakes: the projection leaders, the relay, and the writes waiting for their seal. I/O.

It reconnects (with back-off) whenever its connection dies, and checks a quiet one now
and then. Nobody waits on it: every user polls as well, so a lost or hanging LISTEN only
slows them to their poll interval. It calls ``on_notify`` when it (re)connects and when
it loses the connection, because a NOTIFY may have been missed in between. A user that
acts on what a NOTIFY names (its payload) passes ``on_payload``, which then receives each
notification instead of ``on_notify``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

log = logging.getLogger(__name__)


class Listener:
    _HEALTH_CHECK = 30.0
    _STEP_TIMEOUT = 5.0

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        channel: str,
        on_notify: Callable[[], None],
        on_payload: Callable[[str], None] | None = None,
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._on_notify = on_notify
        self._on_payload = on_payload
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    def start(self) -> None:
        """Run ``run`` in a task of its own (``close`` stops it)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"listen:{self._channel}")

    async def run(self) -> None:
        """Listen until cancelled."""
        delay = 0.1
        while True:
            conn: asyncpg.Connection | None = None
            lost = asyncio.Event()
            try:
                conn = await asyncio.wait_for(self._connect(), self._STEP_TIMEOUT)
                conn.add_termination_listener(lambda _, event=lost: event.set())
                # A name of its own, so operators (and tests) can tell it from its owner's.
                await asyncio.wait_for(
                    conn.execute(
                        "SELECT set_config('application_name', current_setting('application_name') || '-listen', false)"
                    ),
                    self._STEP_TIMEOUT,
                )
                await asyncio.wait_for(
                    conn.add_listener(self._channel, self._notified), self._STEP_TIMEOUT
                )
                self._conn = conn
                self._on_notify()
                delay = 0.1
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), self._HEALTH_CHECK)
                    if not lost.is_set():
                        await asyncio.wait_for(conn.fetchval("SELECT 1"), self._STEP_TIMEOUT)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning(
                    "LISTEN %s: connection lost or refused (%s); polling meanwhile",
                    self._channel,
                    str(exc) or type(exc).__name__,
                )
            finally:
                self._conn = None
                if conn is not None and not conn.is_closed():
                    conn.terminate()  # not close(): a dead peer could make that hang
            self._on_notify()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _notified(self, _conn: object, _pid: object, _channel: object, payload: object) -> None:
        if self._on_payload is None:
            self._on_notify()
        else:
            self._on_payload(str(payload))

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()
