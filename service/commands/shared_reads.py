"""Concurrent reads of one key share a query, and none is answered by a query that began
before it asked. No I/O of its own: the fetch given does the reading.

A hot model is read by many requests at once (MLflow fetches a version's files in a burst,
deployment systems poll an alias), and each asked Postgres for the model's id and stream
version. A request may share a fetch only if that fetch has not started yet: one under
way when the request arrived could miss a write committed in between. So the first
caller for a key launches a fetch as a task, and every caller for that key until the task
first runs (the rest of the event loop's turn: requests that arrived together) joins it;
callers after that launch the next. Reads stay as fresh as one query each.

Why not also queue callers behind a fetch under way, for one more fetch when it ends?
That shares more, but a query that stalls (its backend descheduled on a busy machine)
then holds up every caller queued behind it too; measured at 16 connections, the p99 of
a small download tripled.

A fetch runs in its own task, so a caller that goes away (a client disconnecting) cancels
only its own wait; the others still get their answer. A fetch that raises raises the same
error to every caller it answers. Requests end before the server closes its pool, and
with them the fetches they wait for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SharedReads(Generic[K, V]):
    def __init__(self, fetch: Callable[[K], Awaitable[V]]) -> None:
        self._fetch = fetch
        self._gathering: dict[K, asyncio.Future[V]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, key: K) -> V:
        """``fetch(key)``'s answer, from a fetch that began after this call."""
        answer = self._gathering.get(key)
        if answer is None:
            answer = self._gathering[key] = asyncio.get_running_loop().create_future()
            answer.add_done_callback(_mark_retrieved)
            task = asyncio.get_running_loop().create_task(self._run(key, answer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(answer)

    async def _run(self, key: K, answer: asyncio.Future[V]) -> None:
        del self._gathering[key]
        try:
            answer.set_result(await self._fetch(key))
        except asyncio.CancelledError:
            answer.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - each caller gets it, as from its own query
            answer.set_exception(exc)


def _mark_retrieved(answer: asyncio.Future[Any]) -> None:
    if not answer.cancelled():
        answer.exception()
