"""Session-wide real servers and per-test schemas. No mocks of Postgres or NATS."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support import servers
from tests.support.database import Database, create_database, drop_schema


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.path)
        if "/integration/" in path:
            item.add_marker(pytest.mark.integration)
        elif "/e2e/" in path:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="modelreg-test-") as tmp:
        path = Path(tmp)
        path.chmod(0o755)  # the embedded Postgres runs as its own system user
        yield path


@pytest.fixture(scope="session")
def database_url(workdir: Path) -> Iterator[str]:
    with servers.postgres_url(workdir) as url:
        yield url


@pytest.fixture(scope="session")
def nats_url(workdir: Path) -> Iterator[str]:
    with servers.nats_url(workdir) as url:
        yield url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A fresh schema with every migration applied, used as the application role."""
    database = await create_database(database_url)
    try:
        yield database
    finally:
        await database.close()
        await drop_schema(database_url, database.schema)
