"""Property: whatever the history and however the receiver fails (500s, dropped
connections, a stretch of both), every wanted event arrives, and each model's events arrive
in log order (after dropping re-sent duplicates by webhook-id, as a receiver does)."""

from __future__ import annotations

import asyncio
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.database import create_database, drop_schema
from tests.support.waiting import eventually
from tests.support.webhook_receiver import Received, Receiver
from tests.support.webhooks import hooks_on, per_model

MODELS = ("m0", "m1", "m2")

# A history: which model each write touches (its first write registers it).
histories = st.lists(st.sampled_from(MODELS), min_size=1, max_size=12)
# The receiver's first answers, in order; after them it answers 204. 0: drop the connection.
failures = st.lists(st.sampled_from([500, 503, 429, 0, 204]), max_size=15)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=histories, answers=failures)
def test_a_random_history_arrives_complete_and_in_order_per_model(
    database_url: str, history: list[str], answers: list[int]
) -> None:
    asyncio.run(_scenario(database_url, history, answers))


async def _scenario(database_url: str, history: list[str], answers: list[int]) -> None:
    pending = list(answers)

    def answer(_: Received) -> int:
        return pending.pop(0) if pending else 204

    db = await create_database(database_url)
    receiver = await Receiver(answer=answer).start()
    try:
        async with hooks_on(db) as hooks:
            # given a subscription to every model's events
            await hooks.subscribe(receiver, event_types=["model.*"])
            # when the history is written while the receiver fails as drawn
            written: dict[str, int] = {}
            for name in history:
                if name in written:
                    await hooks.describe(name, f"{uuid.uuid4()}")
                else:
                    await hooks.register(name)
                written[name] = written.get(name, 0) + 1
            expected = {name: list(range(1, count + 1)) for name, count in written.items()}
            # then each model's events arrive, all of them, in order
            await eventually(lambda: per_model(receiver.delivered) == expected, what=str(expected))
            assert all(r.verified for r in receiver.delivered)
    finally:
        await receiver.stop()
        await db.close()
        await drop_schema(database_url, db.schema)
