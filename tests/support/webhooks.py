"""A registry with its webhook dispatcher, for the webhook tests: the in-process API (sealer
and projections included) and a dispatcher that can be stopped and started again."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.settings import load_settings
from service.webhooks.configure import delivery_config
from service.webhooks.dispatcher import WebhookDispatcher
from service.webhooks.secrets import SecretBox
from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.webhook_receiver import Receiver

FAST_RETRIES = {
    "webhooks_allow_private": True,
    "webhooks_backoff_initial": 0.01,
    "webhooks_backoff_max": 0.05,
    "worker_poll_interval": 0.05,
}


@dataclass
class Hooks:
    api: Api
    db: Database
    settings_overrides: dict[str, Any]
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> None:
        settings = load_settings({}, **(FAST_RETRIES | self.settings_overrides))
        dispatcher = WebhookDispatcher(
            self.db.connect,
            self.db.pool,
            self.db.schema,
            SecretBox(self.api.services.pepper),
            delivery_config(settings),
            standby_interval=0.05,
        )
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(dispatcher.run(self._stop))

    async def stop(self) -> None:
        """Stop the dispatcher as a crash would: cancelled wherever it is."""
        if self._task is not None:
            self._stop.set()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def subscribe(self, receiver: Receiver, **body: Any) -> str:
        response = await self.api.post("/api/v1/webhooks", json={"url": receiver.url, **body})
        assert response.status_code == 201, response.text
        created = response.json()
        receiver.secret = created["secret"]
        subscription_id: str = created["subscription_id"]
        return subscription_id

    async def register(self, name: str) -> None:
        response = await self.api.post("/api/v1/models", json={"name": name})
        assert response.status_code == 201, response.text

    async def describe(self, name: str, text: str) -> None:
        response = await self.api.patch(f"/api/v1/models/{name}", json={"description": text})
        assert response.status_code == 200, response.text


@asynccontextmanager
async def hooks_on(db: Database, **overrides: Any) -> AsyncIterator[Hooks]:
    scratch = tempfile.TemporaryDirectory(prefix="modelreg-hooks-")
    settings = load_settings(
        {},
        db_schema=db.schema,
        read_wait_timeout=10.0,
        data_dir=Path(scratch.name),
        **(FAST_RETRIES | overrides),
    )
    try:
        async with running_api(db, settings) as api:
            hooks = Hooks(api, db, overrides)
            hooks.start()
            try:
                yield hooks
            finally:
                await hooks.stop()
    finally:
        scratch.cleanup()


def per_model(received: list[Any]) -> dict[str, list[int]]:
    """Each model's delivered stream positions, in arrival order, duplicates dropped by
    ``webhook-id`` as a receiver would."""
    seen: set[str] = set()
    found: dict[str, list[int]] = {}
    for request in received:
        if request.message_id in seen:
            continue
        seen.add(request.message_id)
        envelope = request.json["data"]
        found.setdefault(request.json["model"], []).append(envelope["stream_position"])
    return found
