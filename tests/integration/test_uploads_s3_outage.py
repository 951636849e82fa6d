"""The S3 server going away during an upload: a retryable 503 with Retry-After (never a
500), the bytes before the outage kept, and the upload finished once S3 is back. Real
moto server behind a TCP proxy the test cuts; real Postgres."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from service.settings import load_settings
from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.s3_server import S3Server, s3_server
from tests.support.tcp_proxy import CuttableProxy

M = "/api/v1/models"
PART = 256 * 1024
BODY = bytes(range(256)) * (4 * PART // 256)
HEX = hashlib.sha256(BODY).hexdigest()


@pytest.fixture(scope="module")
def s3(workdir: Path) -> Iterator[S3Server]:
    with s3_server(workdir / "moto-outage.log") as server:
        yield server


@dataclass
class Setup:
    api: Api
    proxy: CuttableProxy


@pytest.fixture
async def setup(
    s3: S3Server, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Setup]:
    moto = urlsplit(s3.endpoint)
    assert moto.hostname is not None and moto.port is not None
    bucket = s3.new_bucket()
    async with CuttableProxy(moto.hostname, moto.port) as proxy:
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
        settings = load_settings(
            {},
            db_schema=db.schema,
            read_wait_timeout=10.0,
            data_dir=tmp_path,
            artifacts_url=f"s3://{bucket}/registry",
            uploads_part_size=PART,
        )
        async with running_api(db, settings) as api:
            assert (await api.post(M, json={"name": "churn"})).status_code == 201
            yield Setup(api, proxy)


def assert_retryable(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"].isdigit()
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["code"] == "blob_store_unavailable"


async def test_a_single_put_while_s3_is_away_answers_503_then_succeeds(setup: Setup) -> None:
    # given S3 unreachable
    await setup.proxy.cut()

    # when a blob is uploaded, then 503 says retry
    assert_retryable(await setup.api.put(f"{M}/churn/blobs/sha256:{HEX}", content=BODY))

    # and once S3 is back the same upload is stored
    await setup.proxy.restore()
    stored = await setup.api.put(f"{M}/churn/blobs/sha256:{HEX}", content=BODY)
    assert stored.status_code == 201, stored.text


async def test_s3_going_away_mid_chunk_answers_503_and_the_upload_resumes(setup: Setup) -> None:
    api, proxy = setup.api, setup.proxy
    opened = await api.post(
        f"{M}/churn/uploads", json={"digest": f"sha256:{HEX}", "size": len(BODY)}
    )
    location = opened.json()["location"]

    async def parts_then_outage() -> AsyncIterator[bytes]:
        # The server asks for the third part only after it stored the second in S3.
        yield BODY[:PART]
        yield BODY[PART : 2 * PART]
        await proxy.cut()
        yield BODY[2 * PART :]

    # when S3 goes away after two parts of a chunk
    answer = await api.patch(
        location, content=parts_then_outage(), headers={"Content-Range": f"0-{len(BODY) - 1}"}
    )

    # then the answer is a retryable 503, not a 500
    assert_retryable(answer)
    assert_retryable(await api.get(location))
    # and once S3 is back the parts stored before the outage are still committed
    await proxy.restore()
    offset = (await api.get(location)).json()["offset"]
    assert offset == 2 * PART
    resumed = await api.patch(
        location, content=BODY[offset:], headers={"Content-Range": f"{offset}-{len(BODY) - 1}"}
    )
    assert resumed.status_code == 202, resumed.text
    committed = await api.put(location)
    assert committed.status_code == 201, committed.text
    assert await api.services.blobs.size_of(HEX) == len(BODY)
