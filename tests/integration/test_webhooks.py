"""Webhook delivery against real HTTP receivers: signed, ordered per model, never skipped
(a failing, a slow and a down receiver; the dispatcher stopped mid-delivery), dead-lettered
and redelivered on request."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ssl
from datetime import UTC, datetime, timedelta
from typing import Any

from events.catalogue import CODEC
from events.streams import webhook_stream
from events.webhooks import WEBHOOKS
from service.settings import load_settings
from service.webhooks import ledger
from service.webhooks.configure import delivery_config
from service.webhooks.log_tail import LogTail
from service.webhooks.runner import SubscriptionRunner
from service.webhooks.secrets import SecretBox, load_secret
from tests.support.database import Database
from tests.support.waiting import eventually
from tests.support.webhook_receiver import Received, Receiver
from tests.support.webhooks import Hooks, hooks_on, per_model


async def test_a_receiver_gets_each_wanted_event_signed_so_it_verifies_the_sender(
    db: Database,
) -> None:
    # given a receiver subscribed to churn's model events
    receiver = await Receiver().start()
    async with hooks_on(db) as hooks:
        await hooks.subscribe(receiver, models=["churn"], event_types=["model.*"])
        # when churn is registered and described, and another model too
        await hooks.register("churn")
        await hooks.register("fraud")
        await hooks.describe("churn", "v2 of the description")
        await eventually(lambda: len(receiver.delivered) == 2, what="two deliveries")
    await receiver.stop()
    # then only churn's two events arrive, in order, each verified by the receiver
    assert [r.json["type"] for r in receiver.delivered] == [
        "model.registered",
        "model.description_updated",
    ]
    assert all(r.verified for r in receiver.delivered)
    # and the signature is the documented HMAC-SHA256 over id.timestamp.body
    first = receiver.delivered[0]
    key = base64.b64decode(receiver.secret.removeprefix("whsec_"))
    signed = f"{first.message_id}.{first.headers['webhook-timestamp']}.".encode() + first.body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert first.headers["webhook-signature"] == expected
    assert first.message_id == first.json["data"]["event_id"]


async def test_a_failing_event_holds_back_its_own_model_only(db: Database) -> None:
    # given a receiver that answers 500 to everything about churn until told otherwise
    churn_fails = True

    def answer(request: Received) -> int:
        return 500 if churn_fails and request.json["model"] == "churn" else 204

    receiver = await Receiver(answer=answer).start()
    async with hooks_on(db) as hooks:
        subscription = await hooks.subscribe(receiver)
        # when churn and fraud each get three events
        for name in ("churn", "fraud"):
            await hooks.register(name)
            await hooks.describe(name, "two")
            await hooks.describe(name, "three")
        # then fraud's arrive while churn's first is retried
        await eventually(lambda: per_model(receiver.delivered).get("fraud") == [1, 2, 3])
        await eventually(
            lambda: sum(1 for r in receiver.received if r.json["model"] == "churn") >= 3,
            what="churn retried",
        )
        assert "churn" not in per_model(receiver.delivered)
        assert {
            r.json["data"]["stream_position"]
            for r in receiver.received
            if r.json["model"] == "churn"
        } == {1}

        # and the delivery log shows the failed attempts with their response codes, once
        # the runner has recorded them (it records attempts in batches, a few a second)
        async def pending() -> list[dict[str, Any]]:
            log = (await hooks.api.get(f"/api/v1/webhooks/{subscription}/deliveries")).json()
            return [d for d in log if d["status"] == "pending"]

        await eventually(pending, what="churn's first delivery recorded as pending")
        churn_first = (await pending())[0]
        assert churn_first["response_code"] == 500 and churn_first["attempts"] >= 1
        # when the receiver recovers, churn's events follow in order
        churn_fails = False
        await eventually(lambda: per_model(receiver.delivered).get("churn") == [1, 2, 3])
    await receiver.stop()


async def test_a_slow_receiver_does_not_delay_another_subscription(db: Database) -> None:
    # given a receiver that holds every request, and a healthy one
    slow = await Receiver().start()
    slow.flowing.clear()
    fast = await Receiver().start()
    async with hooks_on(db) as hooks:
        await hooks.subscribe(slow)
        await hooks.subscribe(fast)
        # when events are written
        for name in ("a", "b", "c"):
            await hooks.register(name)
        # then the healthy receiver gets them all while the slow one answered none
        await eventually(lambda: len(fast.delivered) == 3, what="fast deliveries")
        assert slow.received == []
        # and once the slow one answers, it gets them all too
        slow.flowing.set()
        await eventually(lambda: len(per_model(slow.delivered)) == 3, what="slow deliveries")
    await slow.stop()
    await fast.stop()


async def test_a_receiver_down_for_a_while_gets_everything_in_order_when_back(
    db: Database,
) -> None:
    # given a subscribed receiver that then goes down
    receiver = await Receiver().start()
    async with hooks_on(db) as hooks:
        subscription = await hooks.subscribe(receiver)
        await receiver.stop()
        # when events are written while it is down, and retried without an answer
        await hooks.register("churn")
        for n in range(4):
            await hooks.describe("churn", f"d{n}")

        async def refused_attempts() -> bool:
            log = (await hooks.api.get(f"/api/v1/webhooks/{subscription}/deliveries")).json()
            return any(d["attempts"] >= 2 and d["response_code"] is None for d in log)

        await eventually(refused_attempts, what="connection failures recorded")
        # then once it is back, every event arrives, in order
        await receiver.start()
        await eventually(lambda: per_model(receiver.delivered).get("churn") == [1, 2, 3, 4, 5])
    await receiver.stop()


async def test_stopping_the_dispatcher_mid_delivery_skips_nothing(db: Database) -> None:
    # given a receiver failing everything, and events waiting to be delivered
    failing = True
    receiver = await Receiver(answer=lambda _: 503 if failing else 200).start()
    async with hooks_on(db) as hooks:
        await hooks.subscribe(receiver)
        for name in ("m1", "m2"):
            await hooks.register(name)
            await hooks.describe(name, "x")
        await eventually(lambda: len(receiver.received) >= 4, what="attempts made")
        # when the dispatcher dies mid-retry, more events come, and a new one starts
        await hooks.stop()
        await hooks.describe("m1", "after the crash")
        failing = False
        hooks.start()
        # then every event arrives, in order per model
        await eventually(
            lambda: per_model(receiver.delivered) == {"m1": [1, 2, 3], "m2": [1, 2]},
            what="all delivered after the restart",
        )
    await receiver.stop()


async def test_a_dead_lettered_delivery_is_sent_again_on_request(db: Database) -> None:
    # given deliveries dead-lettered after two attempts
    answering = 500
    receiver = await Receiver(answer=lambda _: answering).start()
    async with hooks_on(db, webhooks_max_attempts=2) as hooks:
        subscription = await hooks.subscribe(receiver)
        await hooks.register("churn")
        await hooks.describe("churn", "later")

        async def log() -> list[dict[str, object]]:
            found = (await hooks.api.get(f"/api/v1/webhooks/{subscription}/deliveries")).json()
            return list(found)

        async def both_dead() -> bool:
            rows = await log()
            return len(rows) == 2 and {d["status"] for d in rows} == {"dead"}

        await eventually(both_dead, what="both dead-lettered (the lane moved on)")
        dead = await log()
        assert all(d["attempts"] == 2 for d in dead)
        position = min(int(str(d["log_position"])) for d in dead)
        detail = (
            await hooks.api.get(f"/api/v1/webhooks/{subscription}/deliveries/{position}")
        ).json()
        assert [a["response_code"] for a in detail["attempts"]] == [500, 500]
        # when the receiver recovers and the first is redelivered
        answering = 200
        response = await hooks.api.post(
            f"/api/v1/webhooks/{subscription}/deliveries/{position}/redeliver"
        )
        assert response.status_code == 202, response.text
        # then it arrives, with the same webhook-id as before
        await eventually(lambda: len(receiver.delivered) == 1, what="redelivered")
        assert receiver.delivered[0].json["log_position"] == position
        ids = {r.message_id for r in receiver.received if r.json["log_position"] == position}
        assert len(ids) == 1
        # and a pending or unknown delivery cannot be redelivered
        missing = await hooks.api.post(
            f"/api/v1/webhooks/{subscription}/deliveries/999999/redeliver"
        )
        assert missing.status_code == 404
    await receiver.stop()


async def test_a_deleted_subscription_gets_nothing_more(db: Database) -> None:
    # given two subscriptions to the same receiver's events, one then deleted
    kept, dropped = await Receiver().start(), await Receiver().start()
    async with hooks_on(db) as hooks:
        await hooks.subscribe(kept)
        subscription = await hooks.subscribe(dropped)
        response = await hooks.api.delete(f"/api/v1/webhooks/{subscription}")
        assert response.status_code == 200, response.text
        # when an event is written
        await hooks.register("churn")
        # then only the live subscription's receiver gets it
        await eventually(lambda: len(kept.delivered) == 1)
        assert dropped.received == []
        # and the deleted subscription's secret is erased
        left = await hooks.db.pool.fetchval(
            "SELECT count(*) FROM webhook_secrets WHERE subscription_id = $1", subscription
        )
        assert left == 0
    await kept.stop()
    await dropped.stop()


async def test_two_dispatchers_deliver_each_event_once(db: Database) -> None:
    # given a second dispatcher beside the first (another worker replica)
    receiver = await Receiver().start()
    async with hooks_on(db) as hooks:
        second = Hooks(hooks.api, db, {})
        second.start()
        await hooks.subscribe(receiver)
        # when events are written
        for name in ("a", "b"):
            await hooks.register(name)
            await hooks.describe(name, "x")
        await eventually(lambda: per_model(receiver.delivered) == {"a": [1, 2], "b": [1, 2]})
        await second.stop()
    await receiver.stop()
    # then only the leader delivered: each event arrived once
    ids = [r.message_id for r in receiver.received]
    assert len(ids) == len(set(ids)) == 4


async def test_settled_deliveries_behind_the_cursor_age_out(db: Database) -> None:
    # given delivered events, recorded and passed by the cursor
    receiver = await Receiver().start()
    async with hooks_on(db) as hooks:
        subscription = await hooks.subscribe(receiver)
        await hooks.register("churn")

        async def recorded() -> bool:
            rows = (await hooks.api.get(f"/api/v1/webhooks/{subscription}/deliveries")).json()
            return len(rows) == 1 and rows[0]["status"] == "delivered"

        await eventually(recorded, what="the delivery recorded")
        # when the retention passes (an hour ago is kept, later than now is not)
        await ledger.prune(db.pool, datetime.now(UTC) - timedelta(hours=1))
        assert await recorded()
        await ledger.prune(db.pool, datetime.now(UTC) + timedelta(seconds=1))
        # then the delivery and its attempts are gone
        assert (await hooks.api.get(f"/api/v1/webhooks/{subscription}/deliveries")).json() == []
        assert await db.pool.fetchval("SELECT count(*) FROM webhook_attempts") == 0
    await receiver.stop()


async def test_a_runner_reads_nothing_past_its_subscriptions_deletion(db: Database) -> None:
    # given a subscription, then (with no dispatcher running) its deletion and a new model
    dropped = await Receiver().start()
    async with hooks_on(db) as hooks:
        await hooks.stop()
        subscription = await hooks.subscribe(dropped)
        stream = webhook_stream(subscription)
        created = await hooks.api.services.store.read_stream(stream)
        pool = hooks.db.pool
        secret = await load_secret(pool, SecretBox(hooks.api.services.pepper), subscription)
        response = await hooks.api.delete(f"/api/v1/webhooks/{subscription}")
        assert response.status_code == 200, response.text
        await hooks.register("churn")
        # and a runner started on the subscription as it was before its deletion, as a
        # dispatcher that has not noticed the deletion yet still runs it
        state = WEBHOOKS.fold(CODEC.decode(e.envelope) for e in created)  # type: ignore[misc]
        assert state.active
        settings = load_settings({}, webhooks_allow_private=True)
        runner = SubscriptionRunner(
            pool,
            LogTail(pool),
            state,
            secret,
            ssl.create_default_context(),
            delivery_config(settings),
        )
        deletion = await pool.fetchval(
            "SELECT max(log_position) FROM event_log WHERE stream_id = $1", stream
        )
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        try:
            # when it has read the log as far as the deletion
            await eventually(lambda: runner.scanned >= deletion, what="the runner read the log")
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
        # then it stopped there: the model registered after it is neither queued nor sent
        assert (runner.scanned, runner.queued, dropped.received) == (deletion, 0, [])
    await dropped.stop()
