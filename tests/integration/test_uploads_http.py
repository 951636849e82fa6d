"""Resumable upload sessions and presigned S3 URLs through the API, on real Postgres and
each blob store: the file store under the data dir, and S3 on a real S3-compatible server
(moto's). docs/artifacts.md, "Resumable uploads"."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import obstore
import pytest

from events.access import Role
from events.streams import artifacts_stream
from service.artifacts import uploads_local
from service.artifacts.blobstore import blob_key
from service.artifacts.local import LocalBlobStore
from service.artifacts.s3 import S3BlobStore
from service.settings import load_settings
from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.s3_server import S3Server, s3_server
from tests.support.subjects import named
from tests.support.waiting import eventually

M = "/api/v1/models"
PART = 256 * 1024  # MODELREG_UPLOADS_PART_SIZE here: a few parts per blob
BODY = bytes(range(256)) * (3 * PART // 256) + b"tail"  # 3 parts and a short last one
HEX = hashlib.sha256(BODY).hexdigest()


@pytest.fixture(scope="module")
def s3(workdir: Path) -> Iterator[S3Server]:
    with s3_server(workdir / "moto-uploads.log") as server:
        yield server


async def started_api(
    request: pytest.FixtureRequest,
    db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    **extra: Any,
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
        artifacts_max_bytes=32 * 1024 * 1024,
        uploads_part_size=PART,
        **extra,
    )
    async with running_api(db, settings) as running:
        assert (await running.post(M, json={"name": "churn"})).status_code == 201
        assert (await running.post(M, json={"name": "fraud"})).status_code == 201
        yield running


@pytest.fixture(params=["file", "s3"])
async def api(
    request: pytest.FixtureRequest, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    async for running in started_api(request, db, tmp_path, monkeypatch):
        yield running


@pytest.fixture(params=["s3"])
async def s3_api(
    request: pytest.FixtureRequest, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    async for running in started_api(request, db, tmp_path, monkeypatch):
        yield running


async def open_upload(
    api: Api, body: bytes = BODY, model: str = "churn", **kwargs: Any
) -> httpx.Response:
    digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
    return await api.post(
        f"{M}/{model}/uploads", json={"digest": digest, "size": len(body)}, **kwargs
    )


async def send(api: Api, location: str, body: bytes, start: int, **kwargs: Any) -> httpx.Response:
    end = start + len(body) - 1
    headers = {"Content-Range": f"{start}-{end}", **kwargs.pop("headers", {})}
    return await api.patch(location, content=body, headers=headers, **kwargs)


async def blob_events(api: Api, model: str = "churn") -> list[Any]:
    model_id = await api.services.registry.model_id(model)
    return await api.services.store.read_stream(artifacts_stream(model_id))


async def upload_sessions(api: Api) -> list[str]:
    blobs = api.services.blobs
    if isinstance(blobs, LocalBlobStore):
        root = blobs.root / "blobs/incoming/uploads"
        return sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    assert isinstance(blobs, S3BlobStore)
    listing = await obstore.list_with_delimiter_async(blobs.object_store, "uploads/")
    return sorted(listing["common_prefixes"])


# --- the session protocol -------------------------------------------------------------------


async def test_chunks_sent_at_the_reported_offset_make_one_verified_blob(api: Api) -> None:
    # given an open session for BODY
    opened = await open_upload(api)
    assert opened.status_code == 201, opened.text
    session = opened.json()
    location = session["location"]
    assert (session["offset"], session["size"], session["digest"]) == (
        0,
        len(BODY),
        f"sha256:{HEX}",
    )
    assert opened.headers["Location"] == location

    # when the bytes go in two chunks, each at the offset the last answer reported
    cut = len(BODY) * 2 // 3
    first = await send(api, location, BODY[:cut], 0)
    assert first.status_code == 202, first.text
    offset = first.json()["offset"]
    assert offset == cut
    second = await send(api, location, BODY[offset:], offset)
    assert second.status_code == 202, second.text
    assert second.json()["offset"] == len(BODY)
    assert second.headers["Range"] == f"0-{len(BODY) - 1}"
    assert (await api.get(location)).json()["offset"] == len(BODY)
    probed = await api.request("HEAD", location)
    assert (probed.status_code, probed.headers["Upload-Offset"]) == (200, str(len(BODY)))
    # and the session is committed
    committed = await api.put(location)

    # then the blob is stored, recorded once, and the session is gone
    assert committed.status_code == 201, committed.text
    assert committed.json()["events"] == ["artifact.blob_stored"]
    assert committed.headers["ETag"] == f'"sha256:{HEX}"'
    assert await api.services.blobs.size_of(HEX) == len(BODY)
    assert [await named(api.services.pool, e.envelope.actor) for e in await blob_events(api)] == [
        "admin"
    ]
    assert (await api.get(location)).status_code == 404
    assert await upload_sessions(api) == []
    # and a version may name it, and serves the same bytes
    entry = {"path": "model.bin", "sha256": HEX, "size": len(BODY)}
    assert (await api.post(f"{M}/churn/versions", json={"artifacts": [entry]})).status_code == 201
    assert (await api.get(f"{M}/churn/versions/1/files/model.bin")).content == BODY


@pytest.mark.parametrize("api", ["file"], indirect=True)
async def test_a_chunk_that_meets_a_full_disk_is_507_and_the_session_resumes_once_freed(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a session whose first chunk was kept
    location = (await open_upload(api)).json()["location"]
    cut = len(BODY) // 2
    assert (await send(api, location, BODY[:cut], 0)).status_code == 202
    # and a disk that then fills up
    write = uploads_local._write

    def full(handle: Any, data: bytes, hasher: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(uploads_local, "_write", full)

    # when the rest is sent
    refused = await send(api, location, BODY[cut:], cut)

    # then 507 says the storage is full, and the session still holds the first chunk only
    assert refused.status_code == 507, refused.text
    assert refused.json()["type"] == "urn:modelreg:insufficient_storage"
    assert (await api.get(location)).json()["offset"] == cut

    # and once space is freed, the rest goes in at that offset and makes the blob
    monkeypatch.setattr(uploads_local, "_write", write)
    assert (await send(api, location, BODY[cut:], cut)).status_code == 202
    committed = await api.put(location)
    assert committed.status_code == 201, committed.text
    assert await api.services.blobs.size_of(HEX) == len(BODY)


async def test_a_chunk_not_at_the_committed_offset_is_refused_with_the_offset(api: Api) -> None:
    location = (await open_upload(api)).json()["location"]
    assert (await send(api, location, BODY[:PART], 0)).json()["offset"] == PART

    # when the same chunk is sent again (a retry whose answer was lost), or one skips ahead
    for start in (0, PART + 1):
        refused = await send(api, location, BODY[start : start + PART], start)

        # then 416 says where to resume, and nothing was written twice
        assert refused.status_code == 416, refused.text
        problem = refused.json()
        assert (problem["field"], problem["rule"]) == ("Content-Range", "offset")
        assert problem["details"] == {"offset": PART}
        assert refused.headers["Upload-Offset"] == str(PART)
        assert refused.headers["Range"] == f"0-{PART - 1}"
    assert (await api.get(location)).json()["offset"] == PART


@pytest.mark.parametrize("header", [None, "bytes", "9-3", "-5"])
async def test_a_chunk_without_a_readable_content_range_is_refused(
    api: Api, header: str | None
) -> None:
    location = (await open_upload(api)).json()["location"]
    headers = {} if header is None else {"Content-Range": header}
    refused = await api.patch(location, content=b"abc", headers=headers)
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "Content-Range"
    assert refused.json()["rule"] == ("required" if header is None else "pattern")
    assert (await api.get(location)).json()["offset"] == 0


async def test_bytes_past_the_declared_size_are_refused_and_an_early_commit_is_409(
    api: Api,
) -> None:
    location = (await open_upload(api, b"0123456789")).json()["location"]

    # when a chunk carries more than the session declared
    refused = await send(api, location, b"0123456789extra", 0)

    # then 422 names the rule, and the declared bytes before it were kept
    assert refused.status_code == 422, refused.text
    assert (refused.json()["field"], refused.json()["rule"]) == ("body", "declared_size")
    assert (await api.get(location)).json()["offset"] == 10

    # and a session missing bytes cannot be committed
    short = (await open_upload(api)).json()["location"]
    assert (await send(api, short, BODY[:100], 0)).status_code == 202
    early = await api.put(short)
    assert early.status_code == 409, early.text
    assert (early.json()["field"], early.json()["rule"]) == ("size", "complete")
    assert early.json()["details"] == {"offset": 100, "size": len(BODY)}
    assert await blob_events(api) == []


async def test_a_second_writer_is_refused_while_a_chunk_is_still_arriving(api: Api) -> None:
    # given a chunk whose body stalls halfway
    location = (await open_upload(api)).json()["location"]
    stalled, release = asyncio.Event(), asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield BODY[:PART]
        stalled.set()
        await release.wait()
        yield BODY[PART:]

    whole = {"Content-Range": f"0-{len(BODY) - 1}"}
    first = asyncio.create_task(api.patch(location, content=slow_body(), headers=whole))
    await stalled.wait()

    # when another request writes to, or commits, the same session meanwhile
    for second in (await send(api, location, BODY, 0), await api.put(location)):
        # then it is refused as busy (retry soon), not interleaved
        assert second.status_code == 409, second.text
        assert (second.json()["code"], second.json()["rule"]) == ("upload_busy", "one_writer")
        assert second.headers["Retry-After"] == "1"

    # and the first chunk completes undisturbed
    release.set()
    assert (await first).json()["offset"] == len(BODY)
    assert (await api.put(location)).status_code == 201


async def test_a_session_whose_bytes_do_not_hash_to_its_digest_keeps_nothing(api: Api) -> None:
    # given a session for BODY that receives other bytes of the same length
    location = (await open_upload(api)).json()["location"]
    forged = bytes(len(BODY))
    assert (await send(api, location, forged, 0)).status_code == 202

    # when it is committed
    refused = await api.put(location)

    # then 422 names the rule; no blob, no event, no session is left
    assert refused.status_code == 422, refused.text
    assert (refused.json()["field"], refused.json()["rule"]) == ("digest", "digest_mismatch")
    assert await api.services.blobs.size_of(HEX) is None
    assert await api.services.blobs.size_of(hashlib.sha256(forged).hexdigest()) is None
    assert await blob_events(api) == []
    assert await upload_sessions(api) == []


async def test_an_aborted_session_is_gone(api: Api) -> None:
    location = (await open_upload(api)).json()["location"]
    assert (await send(api, location, BODY[:PART], 0)).status_code == 202
    assert (await api.delete(location)).status_code == 204
    assert (await api.get(location)).status_code == 404
    assert (await send(api, location, BODY[PART:], PART)).status_code == 404
    assert await upload_sessions(api) == []


async def test_bad_session_requests_are_refused_naming_the_field(api: Api) -> None:
    bad_digest = await api.post(f"{M}/churn/uploads", json={"digest": "md5:x", "size": 1})
    assert (bad_digest.status_code, bad_digest.json()["field"]) == (422, "digest")
    too_big = await api.post(
        f"{M}/churn/uploads", json={"digest": f"sha256:{HEX}", "size": 32 * 1024 * 1024 + 1}
    )
    assert too_big.status_code == 422, too_big.text
    assert (too_big.json()["field"], too_big.json()["rule"]) == ("size", "max_bytes")
    negative = await api.post(f"{M}/churn/uploads", json={"digest": f"sha256:{HEX}", "size": -1})
    assert negative.status_code in (400, 422), negative.text
    assert (await api.get(f"{M}/churn/uploads/not-a-session")).status_code == 404
    assert (await api.get(f"{M}/churn/uploads/..%2F..%2Fetc")).status_code == 404
    assert await upload_sessions(api) == []


async def test_sessions_need_write_on_their_own_model(api: Api) -> None:
    # given a session of churn, and tokens that may not write churn
    location = (await open_upload(api)).json()["location"]
    session_id = location.rsplit("/", 1)[-1]
    reader = await api.token("rita", Role.READER)
    fraud_only = await api.token("ci", Role.CONTRIBUTOR, scopes=("fraud",))

    # then neither can open, read, append to, commit or abort churn's sessions
    assert (await open_upload(api, as_=reader)).status_code == 403
    assert (await open_upload(api, as_=fraud_only)).status_code == 403
    for token in (reader, fraud_only):
        assert (await api.get(location, as_=token)).status_code == 403
        assert (await api.request("HEAD", location, as_=token)).status_code == 403
        assert (await send(api, location, BODY[:10], 0, as_=token)).status_code == 403
        assert (await api.put(location, as_=token)).status_code == 403
        assert (await api.delete(location, as_=token)).status_code == 403
    # and through its own model the session's id names nothing
    via_fraud = f"{M}/fraud/uploads/{session_id}"
    assert (await api.get(via_fraud, as_=fraud_only)).status_code == 404
    assert (await send(api, via_fraud, BODY[:10], 0, as_=fraud_only)).status_code == 404
    assert (await api.get(location)).json()["offset"] == 0
    assert (await open_upload(api, model="fraud", as_=fraud_only)).status_code == 201


async def test_two_concurrent_sessions_of_the_same_bytes_store_one_blob(api: Api) -> None:
    locations = [(await open_upload(api)).json()["location"] for _ in range(2)]
    sent = await asyncio.gather(*(send(api, where, BODY, 0) for where in locations))
    assert [s.status_code for s in sent] == [202, 202]
    answers = await asyncio.gather(*(api.put(where) for where in locations))
    assert sorted(a.status_code for a in answers) == [200, 201]
    assert len(await blob_events(api)) == 1
    assert await api.services.blobs.size_of(HEX) == len(BODY)
    assert await upload_sessions(api) == []


@pytest.mark.parametrize("api_ttl", ["file"], indirect=True)
async def test_an_expired_session_is_gone_and_swept(api_ttl: Api) -> None:
    api = api_ttl
    location = (await open_upload(api)).json()["location"]
    assert (await send(api, location, BODY[:10], 0)).status_code == 202

    # then, once its time has passed, it answers 404 and the next opening sweeps it away
    async def expired() -> bool:
        return (await api.get(location)).status_code == 404

    await eventually(expired, what="the session expired", timeout=30)
    fresh = (await open_upload(api)).json()["id"]
    assert await upload_sessions(api) == [fresh]


@pytest.fixture
async def api_ttl(
    request: pytest.FixtureRequest, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    async for running in started_api(request, db, tmp_path, monkeypatch, uploads_ttl=1.0):
        yield running


# --- presigned S3 URLs ----------------------------------------------------------------------


async def test_a_presigned_upload_becomes_a_blob_only_after_the_server_verified_it(
    s3_api: Api,
) -> None:
    api = s3_api
    # given a presigned session
    opened = await api.post(
        f"{M}/churn/uploads",
        json={"digest": f"sha256:{HEX}", "size": len(BODY), "presigned": True},
    )
    assert opened.status_code == 201, opened.text
    session = opened.json()
    assert session["upload_url"] and session["upload_url_expires_at"]
    # the URL names a staging key, never the blob's content address
    assert blob_key(HEX) not in session["upload_url"]

    # when the client PUTs the bytes straight to S3
    async with httpx.AsyncClient() as direct:
        assert (await direct.put(session["upload_url"], content=BODY)).status_code == 200
    # then nothing is a blob yet
    assert await api.services.blobs.size_of(HEX) is None
    assert (await api.get(session["location"])).json()["offset"] == len(BODY)

    # and after the commit the server verified it, stored it, recorded it
    committed = await api.put(session["location"])
    assert committed.status_code == 201, committed.text
    assert await api.services.blobs.size_of(HEX) == len(BODY)
    assert len(await blob_events(api)) == 1
    assert await upload_sessions(api) == []


async def test_a_presigned_upload_of_other_bytes_is_refused_and_never_a_blob(s3_api: Api) -> None:
    api = s3_api
    opened = await api.post(
        f"{M}/churn/uploads",
        json={"digest": f"sha256:{HEX}", "size": len(BODY), "presigned": True},
    )
    session = opened.json()
    async with httpx.AsyncClient() as direct:
        forged = bytes(len(BODY))
        assert (await direct.put(session["upload_url"], content=forged)).status_code == 200
    refused = await api.put(session["location"])
    assert refused.status_code == 422, refused.text
    assert refused.json()["rule"] == "digest_mismatch"
    assert await api.services.blobs.size_of(HEX) is None
    assert await blob_events(api) == []
    assert await upload_sessions(api) == []


async def test_a_presigned_upload_longer_than_declared_is_refused(s3_api: Api) -> None:
    api = s3_api
    opened = await api.post(
        f"{M}/churn/uploads",
        json={"digest": f"sha256:{HEX}", "size": len(BODY), "presigned": True},
    )
    session = opened.json()
    async with httpx.AsyncClient() as direct:
        assert (await direct.put(session["upload_url"], content=BODY + b"!")).status_code == 200
    refused = await api.put(session["location"])
    assert refused.status_code == 422, refused.text
    assert (refused.json()["field"], refused.json()["rule"]) == ("body", "declared_size")
    assert await api.services.blobs.size_of(HEX) is None
    assert await upload_sessions(api) == []


async def test_a_presigned_download_link_serves_a_stored_file_to_readers(s3_api: Api) -> None:
    api = s3_api
    location = (await open_upload(api)).json()["location"]
    await send(api, location, BODY, 0)
    assert (await api.put(location)).status_code == 201
    entry = {"path": "w/model.bin", "sha256": HEX, "size": len(BODY)}
    assert (await api.post(f"{M}/churn/versions", json={"artifacts": [entry]})).status_code == 201
    reader = await api.token("rita", Role.READER, scopes=("churn",))
    outsider = await api.token("ci", Role.READER, scopes=("fraud",))

    link = await api.get(f"{M}/churn/versions/1/links/w/model.bin", as_=reader)

    assert link.status_code == 200, link.text
    assert (link.json()["digest"], link.json()["size"]) == (f"sha256:{HEX}", len(BODY))
    assert link.json()["presigned"] is True
    async with httpx.AsyncClient() as direct:
        assert (await direct.get(link.json()["url"])).content == BODY
    denied = await api.get(f"{M}/churn/versions/1/links/w/model.bin", as_=outsider)
    assert denied.status_code == 403
    missing = await api.get(f"{M}/churn/versions/1/links/nope.bin", as_=reader)
    assert missing.status_code == 404


@pytest.mark.parametrize("api_file", ["file"], indirect=True)
async def test_the_file_store_offers_no_presigned_urls_but_its_own_download_url(
    api_file: Api,
) -> None:
    api = api_file
    refused = await api.post(
        f"{M}/churn/uploads",
        json={"digest": f"sha256:{HEX}", "size": len(BODY), "presigned": True},
    )
    assert refused.status_code == 422, refused.text
    assert (refused.json()["field"], refused.json()["rule"]) == ("presigned", "s3_store")
    assert await upload_sessions(api) == []
    location = (await open_upload(api)).json()["location"]
    await send(api, location, BODY, 0)
    assert (await api.put(location)).status_code == 201
    entry = {"path": "model.bin", "sha256": HEX, "size": len(BODY)}
    assert (await api.post(f"{M}/churn/versions", json={"artifacts": [entry]})).status_code == 201
    # and a download link is the API's own (authenticated, re-hashing) URL
    link = await api.get(f"{M}/churn/versions/1/links/model.bin")
    assert link.status_code == 200, link.text
    assert link.json()["presigned"] is False and link.json()["expires_at"] is None
    assert link.json()["url"].endswith(f"{M}/churn/versions/1/files/model.bin")
    fetched = await api.get(link.json()["url"].removeprefix("http://modelreg.test"))
    assert fetched.content == BODY


@pytest.fixture
async def api_file(
    request: pytest.FixtureRequest, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    async for running in started_api(request, db, tmp_path, monkeypatch):
        yield running


async def test_an_archived_model_takes_no_new_blob_through_a_session(api: Api) -> None:
    # given a session filled before its model was archived
    location = (await open_upload(api)).json()["location"]
    assert (await send(api, location, BODY, 0)).status_code == 202
    archived = await api.post(f"{M}/churn/archive", json={"reason": "retired"})
    assert archived.status_code == 200, archived.text

    # when it is committed, or another session opened, then 409 and nothing is recorded
    assert (await api.put(location)).status_code == 409
    assert (await open_upload(api)).status_code == 409
    assert await blob_events(api) == []


async def test_a_chunk_and_its_commit_stream_through_with_flat_memory(api: Api) -> None:
    # given 24 MiB sent as one chunk in 64 KiB pieces (generated: the test holds none of it)
    piece = bytes(range(256)) * 256
    count = 24 * 1024 * 1024 // len(piece)
    digest = hashlib.sha256()
    for _ in range(count):
        digest.update(piece)
    size = len(piece) * count
    opened = await api.post(
        f"{M}/churn/uploads", json={"digest": f"sha256:{digest.hexdigest()}", "size": size}
    )
    location = opened.json()["location"]

    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield piece

    # when it is appended and committed, with Python's allocations traced
    tracemalloc.start()
    try:
        sent = await api.patch(
            location, content=pieces(), headers={"Content-Range": f"0-{size - 1}"}
        )
        committed = await api.put(location)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # then it is stored whole, and at no point was much of it held in memory (the S3
    # commit's multipart upload holds about one 8 MiB part of Python buffers)
    assert sent.json()["offset"] == size, sent.text
    assert committed.status_code == 201, committed.text
    bound = 12 if isinstance(api.services.blobs, S3BlobStore) else 8
    assert peak < bound * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for a 24 MiB upload"
