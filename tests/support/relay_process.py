"""Run one relay as its own process, for kill -9 tests.

    python -m tests.support.relay_process DATABASE_URL SCHEMA APP_ROLE NATS_URL STREAM PREFIX

Prints ``ready`` once started; runs until SIGTERM (or until it is killed).
"""

from __future__ import annotations

import asyncio
import signal
import sys

from eventlog.db import connect
from service.publication.jetstream import StreamSpec
from service.publication.relay import Relay, RelayConfig, nats_connector


async def main(
    database_url: str, schema: str, app_role: str, nats_url: str, stream: str, prefix: str
) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def connect_db():
        return await connect(database_url, schema=schema, app_role=app_role, name="relay-process")

    relay = Relay(
        connect_db,
        nats_connector(nats_url),
        RelayConfig(
            schema=schema,
            stream=StreamSpec(name=stream, subject_prefix=prefix),
            batch_size=5,
            window=5,
            poll_interval=0.1,
            standby_interval=0.1,
            backoff_max=0.3,
        ),
    )
    print("ready", flush=True)
    await relay.run(stop)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
