"""A consumer kit subscription, handler and run loop for tests: what the consumer and the
NATS authorization tests drive the kit with."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from service.consumers.kit import Delivery, EventConsumer, Subscription
from tests.support.publication import Names
from tests.support.waiting import eventually


def subscription(names: Names, **overrides: object) -> Subscription:
    options: dict[str, object] = {
        "name": "c1",
        "stream": names.stream,
        "subject_prefix": names.prefix,
        "batch_size": 10,
        "ack_wait": 1.0,
        "retry_backoff": 0.001,
        "pull_wait": 0.2,
    }
    options.update(overrides)
    return Subscription(**options)  # type: ignore[arg-type]


class Recorder:
    """A handler that records what it handled; can fail or hang on chosen calls."""

    def __init__(self, fail: Callable[[Delivery], bool] = lambda d: False) -> None:
        self.handled: list[Delivery] = []
        self.fail = fail
        self.hang_at: int | None = None
        self.hanging = asyncio.Event()
        self.calls = 0

    async def __call__(self, delivery: Delivery) -> None:
        self.calls += 1
        if self.hang_at is not None and len(self.handled) == self.hang_at:
            self.hanging.set()
            await asyncio.Event().wait()  # the process dies here
        if self.fail(delivery):
            raise RuntimeError(f"handler failed on {delivery.event.id}")
        self.handled.append(delivery)

    @property
    def ids(self) -> list[str]:
        return [str(d.event.id) for d in self.handled]


async def consume_until(
    consumer: EventConsumer, done: Callable[[], bool], timeout: float = 60.0
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await eventually(lambda: _true(done()), timeout=timeout, what="consumed")
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def _true(value: bool) -> bool:
    return value
