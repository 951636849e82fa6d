"""Storing and serving model files through the API, on real Postgres and each blob store:
the file store under the data dir, and S3 on a real S3-compatible server (moto's)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from events.access import Role
from events.streams import artifacts_stream
from service.artifacts import local
from service.artifacts.local import INCOMING, LocalBlobStore
from service.settings import load_settings
from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.s3_server import S3Server, s3_server
from tests.support.subjects import named

M = "/api/v1/models"
WEIGHTS = b"weights:" + bytes(range(256)) * 4096  # ~1 MiB: more than one chunk
HEX = hashlib.sha256(WEIGHTS).hexdigest()
LIMIT = 32 * 1024 * 1024  # MODELREG_ARTIFACTS_MAX_BYTES in these tests


@pytest.fixture(scope="module")
def s3(workdir: Path) -> Iterator[S3Server]:
    with s3_server(workdir / "moto.log") as server:
        yield server


@pytest.fixture(params=["file", "s3"])
async def api(
    request: pytest.FixtureRequest, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    url = None
    if request.param == "s3":
        server: S3Server = request.getfixturevalue("s3")
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        url = f"s3://{server.new_bucket()}/registry"
    settings = load_settings(
        {},
        db_schema=db.schema,
        read_wait_timeout=10.0,
        data_dir=tmp_path,
        artifacts_url=url,
        artifacts_max_bytes=LIMIT,
    )
    async with running_api(db, settings) as running:
        assert (await running.post(M, json={"name": "churn"})).status_code == 201
        assert (await running.post(M, json={"name": "fraud"})).status_code == 201
        yield running


def blob_url(sha256: str = HEX, model: str = "churn") -> str:
    return f"{M}/{model}/blobs/sha256:{sha256}"


async def upload(api: Api, body: bytes = WEIGHTS, **kwargs: Any) -> Any:
    return await api.put(blob_url(hashlib.sha256(body).hexdigest()), content=body, **kwargs)


async def blob_events(api: Api) -> list[Any]:
    model_id = await api.services.registry.model_id("churn")
    return await api.services.store.read_stream(artifacts_stream(model_id))


def stored(api: Api, sha256: str = HEX) -> Any:
    return api.services.blobs.size_of(sha256)


def stored_entry(path: str = "model.bin", body: bytes = WEIGHTS) -> dict[str, Any]:
    return {"path": path, "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}


async def chunks(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


# --- upload ---------------------------------------------------------------------------------


async def test_an_upload_is_stored_once_and_recorded_once(api: Api) -> None:
    # when the same bytes are uploaded twice
    first = await upload(api)
    second = await upload(api)

    # then the first stores them (201) and the second finds them (200)
    assert first.status_code == 201, first.text
    assert first.json()["events"] == ["artifact.blob_stored"]
    assert first.json()["digest"] == f"sha256:{HEX}"
    assert first.headers["ETag"] == f'"sha256:{HEX}"'
    assert second.status_code == 200, second.text
    assert second.json()["events"] == []
    # one blob of the right size, recorded once with who stored it
    assert await stored(api) == len(WEIGHTS)
    recorded = await blob_events(api)
    assert [
        (e.envelope.event_type, await named(api.services.pool, e.envelope.actor)) for e in recorded
    ] == [("artifact.blob_stored", "admin")]


async def test_a_body_that_does_not_hash_to_the_declared_digest_is_refused_and_not_kept(
    api: Api,
) -> None:
    # when the body is not what the digest names
    claimed = hashlib.sha256(b"something else").hexdigest()
    refused = await api.put(blob_url(claimed), content=chunks(WEIGHTS))

    # then 422 names the rule, and nothing was kept or recorded
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert (refused.json()["field"], refused.json()["rule"]) == ("digest", "digest_mismatch")
    assert await stored(api, claimed) is None
    assert await stored(api) is None
    assert await blob_events(api) == []
    if isinstance(api.services.blobs, LocalBlobStore):
        assert list((api.services.blobs.root / INCOMING).iterdir()) == []


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "chunked"])
async def test_a_body_past_the_size_limit_is_refused_with_413(api: Api, announced: bool) -> None:
    # given one byte more than the limit, announced by Content-Length or not
    piece = b"x" * (1024 * 1024)

    async def too_much() -> AsyncIterator[bytes]:
        for _ in range(LIMIT // len(piece)):
            yield piece
        yield b"x"

    headers = {"Content-Length": str(LIMIT + 1)} if announced else {}
    # when it is uploaded, then 413 names the rule and nothing is recorded
    refused = await api.put(blob_url("ab" * 32), content=too_much(), headers=headers)
    assert refused.status_code == 413, refused.text
    assert (refused.json()["field"], refused.json()["rule"]) == ("body", "max_bytes")
    assert refused.json()["details"] == {"max_bytes": LIMIT}
    assert await blob_events(api) == []


async def test_a_malformed_digest_is_refused_naming_it(api: Api) -> None:
    refused = await api.put(f"{M}/churn/blobs/md5:abc", content=b"x")
    assert refused.status_code == 422
    assert (refused.json()["field"], refused.json()["rule"]) == ("digest", "pattern")


async def test_uploading_needs_write_on_that_model(api: Api) -> None:
    reader = await api.token("rita", Role.READER)
    fraud_only = await api.token("ci", Role.CONTRIBUTOR, scopes=("fraud",))
    assert (await upload(api, as_=reader)).status_code == 403
    assert (await upload(api, as_=fraud_only)).status_code == 403
    assert (
        await api.put(blob_url(), content=WEIGHTS, headers={"Authorization": ""})
    ).status_code == 401
    assert (await api.put(blob_url(model="nope"), content=WEIGHTS)).status_code == 404
    assert await blob_events(api) == []
    assert (
        await api.put(blob_url(model="fraud"), content=WEIGHTS, as_=fraud_only)
    ).status_code == 201


async def test_two_concurrent_uploads_of_the_same_bytes_store_one_blob(api: Api) -> None:
    answers = await asyncio.gather(
        *(api.put(blob_url(), content=chunks(WEIGHTS)) for _ in range(2))
    )
    assert sorted(a.status_code for a in answers) == [200, 201]
    assert len(await blob_events(api)) == 1
    assert await stored(api) == len(WEIGHTS)


@pytest.mark.parametrize("api", ["file"], indirect=True)
async def test_a_full_disk_answers_507_keeps_nothing_and_the_same_upload_works_once_freed(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a data dir whose disk has no room left
    write_parts = local._write_parts

    def full(handle: Any, parts: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local, "_write_parts", full)

    # when a file is uploaded
    refused = await api.put(blob_url(), content=chunks(WEIGHTS))

    # then 507 says the storage is full, and nothing was kept or recorded
    assert refused.status_code == 507, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"] == "urn:modelreg:insufficient_storage"
    assert await stored(api) is None
    assert isinstance(api.services.blobs, LocalBlobStore)
    assert list((api.services.blobs.root / INCOMING).iterdir()) == []
    assert await blob_events(api) == []

    # and once space is freed, the same request stores the blob
    monkeypatch.setattr(local, "_write_parts", write_parts)
    stored_now = await api.put(blob_url(), content=chunks(WEIGHTS))
    assert stored_now.status_code == 201, stored_now.text
    assert await stored(api) == len(WEIGHTS)


# --- the manifest rule ----------------------------------------------------------------------


async def test_a_version_may_name_only_blobs_its_model_stored_unless_external(api: Api) -> None:
    # given a blob stored for fraud, not for churn
    assert (await api.put(blob_url(model="fraud"), content=WEIGHTS)).status_code == 201

    # when churn registers a version naming it, then it is refused naming the path and rule
    refused = await api.post(f"{M}/churn/versions", json={"artifacts": [stored_entry()]})
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert (problem["field"], problem["rule"]) == ("artifacts[0].sha256", "blob_not_stored")
    assert problem["details"]["path"] == "model.bin"

    # an entry with a uri must say it is external
    with_uri = {**stored_entry(), "uri": "file:///home/alice/out/model.bin"}
    refused = await api.post(f"{M}/churn/versions", json={"artifacts": [with_uri]})
    assert (refused.status_code, refused.json()["rule"]) == (422, "external_marker")

    # after churn uploads the bytes (and with an external entry beside it), it is accepted
    assert (await upload(api)).status_code == 201
    external = {**stored_entry("README.md", b"r"), "uri": "s3://b/README.md", "external": True}
    accepted = await api.post(f"{M}/churn/versions", json={"artifacts": [stored_entry(), external]})
    assert accepted.status_code == 201, accepted.text


async def test_a_manifest_stating_another_size_than_the_blob_is_refused(api: Api) -> None:
    assert (await upload(api)).status_code == 201
    entry = {**stored_entry(), "size": len(WEIGHTS) + 1}
    refused = await api.post(f"{M}/churn/versions", json={"artifacts": [entry]})
    assert (refused.status_code, refused.json()["rule"]) == (422, "blob_size")


@pytest.mark.parametrize(
    "path", ["../etc/passwd", "/abs.bin", "a\u202egnp.exe", "a\u200b.bin", "a\x1b.bin"]
)
async def test_artifact_paths_that_escape_or_hide_characters_are_refused(
    api: Api, path: str
) -> None:
    assert (await upload(api)).status_code == 201
    refused = await api.post(f"{M}/churn/versions", json={"artifacts": [stored_entry(path)]})
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "content.artifacts[0].path"


# --- download -------------------------------------------------------------------------------


async def registered(api: Api) -> None:
    """churn v1 holds model.bin (stored) and weights/w.bin (stored), alias champion."""
    small = b"tiny"
    assert (await upload(api)).status_code == 201
    assert (await upload(api, small)).status_code == 201
    body = {"artifacts": [stored_entry(), stored_entry("weights/w.bin", small)]}
    assert (await api.post(f"{M}/churn/versions", json=body)).status_code == 201
    assert (await api.put(f"{M}/churn/aliases/champion", json={"version": 1})).status_code == 200


@pytest.mark.parametrize("ref", ["1", "@champion", "%40champion", "stage:development"])
async def test_a_file_downloads_by_number_alias_or_stage_with_its_digest_as_etag(
    api: Api, ref: str
) -> None:
    await registered(api)
    got = await api.get(f"{M}/churn/versions/{ref}/files/model.bin")
    assert got.status_code == 200, got.text
    assert got.content == WEIGHTS
    assert got.headers["ETag"] == f'"sha256:{HEX}"'
    assert got.headers["Accept-Ranges"] == "bytes"
    nested = await api.get(f"{M}/churn/versions/{ref}/files/weights/w.bin")
    assert nested.content == b"tiny"


async def test_a_range_resumes_a_download_and_a_range_past_the_end_is_416(api: Api) -> None:
    await registered(api)
    url = f"{M}/churn/versions/1/files/model.bin"
    part = await api.get(url, headers={"Range": "bytes=1000-"})
    assert part.status_code == 206
    assert part.content == WEIGHTS[1000:]
    assert part.headers["Content-Range"] == f"bytes 1000-{len(WEIGHTS) - 1}/{len(WEIGHTS)}"
    middle = await api.get(url, headers={"Range": "bytes=5-9"})
    assert (middle.status_code, middle.content) == (206, WEIGHTS[5:10])
    tail = await api.get(url, headers={"Range": "bytes=-3"})
    assert tail.content == WEIGHTS[-3:]
    stale = await api.get(url, headers={"Range": "bytes=5-9", "If-Range": '"sha256:00"'})
    assert (stale.status_code, stale.content) == (200, WEIGHTS)
    past = await api.get(url, headers={"Range": f"bytes={len(WEIGHTS)}-"})
    assert past.status_code == 416
    assert past.headers["Content-Range"] == f"bytes */{len(WEIGHTS)}"


async def test_a_head_of_a_file_gives_its_size_digest_and_ranges_without_its_bytes(
    api: Api,
) -> None:
    # given a stored file
    await registered(api)
    url = f"{M}/churn/versions/@champion/files/model.bin"

    # when a client sizes it with HEAD, then asks HEAD of the range it would resume from
    whole = await api.request("HEAD", url)
    part = await api.request("HEAD", url, headers={"Range": "bytes=1000-"})

    # then it learns what the GET would say, and no byte of the file comes with it
    assert (whole.status_code, whole.content) == (200, b"")
    assert int(whole.headers["Content-Length"]) == len(WEIGHTS)
    assert whole.headers["ETag"] == f'"sha256:{HEX}"'
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert (part.status_code, part.content) == (206, b"")
    assert part.headers["Content-Range"] == f"bytes 1000-{len(WEIGHTS) - 1}/{len(WEIGHTS)}"
    assert int(part.headers["Content-Length"]) == len(WEIGHTS) - 1000
    # and the GET that follows still serves every byte
    assert (await api.get(url)).content == WEIGHTS


async def test_downloads_need_read_and_name_what_is_missing(api: Api) -> None:
    await registered(api)
    fraud_only = await api.token("ci", Role.READER, scopes=("fraud",))
    url = f"{M}/churn/versions/1/files/model.bin"
    assert (await api.get(url, as_=fraud_only)).status_code == 403
    assert (await api.get(f"{M}/churn/versions/2/files/model.bin")).status_code == 404
    assert (await api.get(f"{M}/churn/versions/@nobody/files/model.bin")).status_code == 404
    assert (await api.get(f"{M}/churn/versions/1/files/nope.bin")).status_code == 404
    # a well-formed stage no version holds (any model may define it) is not found; a
    # malformed one names the field and the rule
    assert (await api.get(f"{M}/churn/versions/stage:live/files/model.bin")).status_code == 404
    bad = await api.get(f"{M}/churn/versions/stage:Live/files/model.bin")
    assert (bad.status_code, bad.json()["field"], bad.json()["rule"]) == (422, "version", "pattern")


async def test_an_external_file_is_not_served(api: Api) -> None:
    entry = {**stored_entry(), "uri": "s3://b/model.bin", "external": True}
    assert (await api.post(f"{M}/churn/versions", json={"artifacts": [entry]})).status_code == 201
    refused = await api.get(f"{M}/churn/versions/1/files/model.bin")
    assert refused.status_code == 409
    assert refused.json()["details"]["uri"] == "s3://b/model.bin"


async def test_an_upload_streams_through_with_flat_memory(api: Api) -> None:
    # given 32 MiB sent in 64 KiB pieces (generated, so the test holds none of it)
    piece = bytes(range(256)) * 256
    count = LIMIT // len(piece)
    digest = hashlib.sha256()
    for _ in range(count):
        digest.update(piece)

    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield piece

    # when it is uploaded, with Python's allocations traced
    tracemalloc.start()
    try:
        answer = await api.put(blob_url(digest.hexdigest()), content=pieces())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # then it is stored whole, and at no point was much of it held in memory
    assert answer.status_code == 201, answer.text
    assert answer.json()["size"] == len(piece) * count
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for a 32 MiB upload"
