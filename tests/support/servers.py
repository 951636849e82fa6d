"""Real Postgres and NATS for the test session: the URLs given, or embedded ones.

With ``MODELREG_TEST_DATABASE_URL`` / ``MODELREG_TEST_NATS_URL`` unset, the session starts
an embedded Postgres and an embedded JetStream-enabled NATS under a temporary directory,
exactly as ``modelreg serve`` does on a fresh machine, and stops them at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def postgres_url(workdir: Path) -> Iterator[str]:
    url = os.environ.get("MODELREG_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from service.runtime.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(workdir / "postgres-data")
    try:
        yield server.start()
    finally:
        server.stop()


@contextmanager
def nats_url(workdir: Path) -> Iterator[str]:
    url = os.environ.get("MODELREG_TEST_NATS_URL")
    if url:
        yield url
        return
    from service.runtime.embedded import EmbeddedNats

    # Without credentials: the tests' streams and subjects are their own, per test. The
    # embedded server's permissions are proven in tests/integration/test_embedded_nats_auth.py.
    server = EmbeddedNats(workdir / "nats-data", port=None, auth=False)
    try:
        yield server.start()
    finally:
        server.stop()
