"""A whole version as one tar or zip stream, and the "is it stored?" question a client asks
before uploading, through the API on real Postgres and each blob store (the file store
under the data dir, S3 on moto's server)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tracemalloc
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from events.access import Role
from events.version_content import ArtifactEntry
from service.artifacts.archive import (
    MANIFEST_PATH,
    ArchiveFormat,
    archive_stream,
    manifest_bytes,
    tar_length,
)
from service.settings import load_settings
from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.s3_server import S3Server, s3_server

M = "/api/v1/models"
FILES = {
    "model.bin": b"weights:" + bytes(range(256)) * 5000,  # more than one store chunk
    "config/params.json": b'{"lr": 0.1}',
    "a/long/" + "deep/" * 30 + "name-\u00e9t\u00e9.txt": b"a path past tar's 100 bytes",
}
EXTERNAL = {
    "path": "tokenizer.json",
    "sha256": "c" * 64,
    "size": 7,
    "external": True,
    "uri": "s3://elsewhere/tokenizer.json",
}


@pytest.fixture(scope="module")
def s3(workdir: Path) -> Iterator[S3Server]:
    with s3_server(workdir / "moto-archive.log") as server:
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
        {}, db_schema=db.schema, read_wait_timeout=10.0, data_dir=tmp_path, artifacts_url=url
    )
    async with running_api(db, settings) as running:
        assert (await running.post(M, json={"name": "churn"})).status_code == 201
        assert (await running.post(M, json={"name": "fraud"})).status_code == 201
        yield running


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


async def registered_version(api: Api, external: bool = True) -> None:
    for body in FILES.values():
        stored = await api.put(f"{M}/churn/blobs/sha256:{digest(body)}", content=body)
        assert stored.status_code == 201, stored.text
    entries: list[dict[str, Any]] = [
        {"path": path, "sha256": digest(body), "size": len(body)} for path, body in FILES.items()
    ]
    if external:
        entries.append(EXTERNAL)
    made = await api.post(f"{M}/churn/versions", json={"artifacts": entries})
    assert made.status_code == 201, made.text
    aliased = await api.put(f"{M}/churn/aliases/champion", json={"version": 1})
    assert aliased.status_code == 200, aliased.text


def manifest_of(raw: bytes) -> dict[str, Any]:
    document = json.loads(raw)
    assert isinstance(document, dict)
    return document


async def test_a_version_as_a_tar_holds_every_stored_file_and_lists_the_external_ones(
    api: Api,
) -> None:
    # given a version of three stored files and one external, with an alias
    await registered_version(api)

    # when it is fetched as a tar by alias (the default format)
    answer = await api.get(f"{M}/churn/versions/@champion/archive")

    # then the tar holds the manifest first, then every stored file, byte for byte
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/x-tar"
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert answer.headers["modelreg-external-files"] == "1"
    assert answer.headers["modelreg-version"] == "1"
    assert 'filename="churn-v1.tar"' in answer.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(answer.content)) as archive:
        names = archive.getnames()
        assert names[0] == MANIFEST_PATH and sorted(names[1:]) == sorted(FILES)
        for path, body in FILES.items():
            member = archive.extractfile(path)
            assert member is not None and member.read() == body
        raw = archive.extractfile(MANIFEST_PATH)
        assert raw is not None
        manifest = manifest_of(raw.read())
    # and the manifest names the external file, which is not in the archive
    assert (manifest["model"], manifest["version"]) == ("churn", 1)
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {
        p: digest(b) for p, b in FILES.items()
    }
    assert [(e["path"], e["uri"]) for e in manifest["external"]] == [
        ("tokenizer.json", "s3://elsewhere/tokenizer.json")
    ]
    assert "tokenizer.json" not in names
    # and the same version fetched again is the same bytes (deterministic archives)
    again = await api.get(f"{M}/churn/versions/1/archive")
    assert again.content == answer.content
    # and HEAD says its length and version before anyone streams it
    headed = await api.request("HEAD", f"{M}/churn/versions/@champion/archive")
    assert (headed.status_code, headed.content) == (200, b"")
    assert int(headed.headers["content-length"]) == len(answer.content)
    assert headed.headers["modelreg-version"] == "1"


async def test_a_version_as_a_zip_by_stage_holds_every_stored_file(api: Api) -> None:
    # given a version in staging
    await registered_version(api)
    moved = await api.post(f"{M}/churn/versions/1/stage", json={"to": "staging"})
    assert moved.status_code == 200, moved.text

    # when it is fetched as a zip by stage
    answer = await api.get(f"{M}/churn/versions/stage:staging/archive", params={"format": "zip"})

    # then the zip's members are the manifest and the files, each with its digest
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert archive.testzip() is None  # every member's CRC checks
        assert sorted(archive.namelist()) == sorted([MANIFEST_PATH, *FILES])
        for path, body in FILES.items():
            assert digest(archive.read(path)) == digest(body)
        assert manifest_of(archive.read(MANIFEST_PATH))["external"][0]["path"] == "tokenizer.json"


async def test_bad_archive_requests_are_refused_with_a_problem(api: Api) -> None:
    await registered_version(api, external=False)
    cases = [
        (f"{M}/churn/versions/1/archive?format=rar", 400),
        (f"{M}/churn/versions/9/archive", 404),
        (f"{M}/churn/versions/@nobody/archive", 404),
        # a well-formed stage no version holds (it may be a custom stage): not found
        (f"{M}/churn/versions/stage:limbo/archive", 404),
        (f"{M}/churn/versions/stage:Limbo!/archive", 422),
        (f"{M}/churn/versions/v1/archive", 422),
        (f"{M}/nosuch/versions/1/archive", 404),
    ]
    for path, status in cases:
        answer = await api.get(path)
        assert answer.status_code == status, (path, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json"), path
    # the malformed ones name the field and the rule
    bad_format = (await api.get(cases[0][0])).json()
    assert (bad_format["field"], bad_format["rule"]) == ("format", "enum")
    bad_stage = (await api.get(cases[4][0])).json()
    assert (bad_stage["field"], bad_stage["rule"]) == ("version", "pattern")


async def test_a_token_scoped_to_another_model_can_neither_archive_nor_probe_its_blobs(
    api: Api,
) -> None:
    # given churn's version, and a token that may read and write fraud only
    await registered_version(api, external=False)
    secret = await api.token("mallory", Role.CONTRIBUTOR, scopes=("fraud",))
    body = FILES["model.bin"]

    # when it asks for churn's archive or whether churn stored a blob
    archive = await api.get(f"{M}/churn/versions/1/archive", headers=api.auth(secret))
    probe = await api.request(
        "HEAD", f"{M}/churn/blobs/sha256:{digest(body)}", headers=api.auth(secret)
    )

    # then both are refused, and asking its own model says fraud never stored the bytes
    assert archive.status_code == 403, archive.text
    assert probe.status_code == 403
    own = await api.request(
        "HEAD", f"{M}/fraud/blobs/sha256:{digest(body)}", headers=api.auth(secret)
    )
    assert own.status_code == 404


async def test_head_on_a_blob_says_whether_the_model_stored_it(api: Api) -> None:
    body = FILES["config/params.json"]
    url = f"{M}/churn/blobs/sha256:{digest(body)}"
    # given nothing stored yet: 404
    assert (await api.request("HEAD", url)).status_code == 404
    # when the model stores it: 200 with its size and ETag
    assert (await api.put(url, content=body)).status_code == 201
    found = await api.request("HEAD", url)
    assert found.status_code == 200
    assert found.headers["etag"] == f'"sha256:{digest(body)}"'
    assert found.headers["content-length"] == str(len(body))
    # and a malformed digest is a 422 naming the field
    bad = await api.request("HEAD", f"{M}/churn/blobs/sha256:XYZ")
    assert bad.status_code == 422


@pytest.mark.parametrize("fmt", ["tar", "zip"])
async def test_an_archive_streams_with_flat_memory(api: Api, fmt: ArchiveFormat) -> None:
    # given a version holding a 32 MiB file (sent in pieces: the test holds none of it)
    piece = bytes(range(256)) * 256
    count = 32 * 1024 * 1024 // len(piece)
    digest_of_all = hashlib.sha256()
    for _ in range(count):
        digest_of_all.update(piece)
    sha256 = digest_of_all.hexdigest()

    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield piece

    stored = await api.put(f"{M}/churn/blobs/sha256:{sha256}", content=pieces())
    assert stored.status_code == 201, stored.text
    entry = ArtifactEntry(path="weights.bin", sha256=sha256, size=len(piece) * count)
    manifest = manifest_bytes("churn", 1, [entry])

    # when its archive is produced and consumed chunk by chunk, with allocations traced
    rehashed = hashlib.sha256()
    total = 0
    tracemalloc.start()
    try:
        async for chunk in archive_stream(api.services.blobs, fmt, manifest, [entry]):
            total += len(chunk)
            rehashed.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # then it was all sent, and at no point was much of it held in memory
    assert total > entry.size
    if fmt == "tar":
        assert total == tar_length(manifest, [entry])
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for a 32 MiB {fmt}"


async def test_a_version_with_a_file_where_the_archive_manifest_goes_is_a_conflict(
    api: Api,
) -> None:
    # given a version whose own file sits at the archive manifest's path
    body = b"{}"
    assert (await api.put(f"{M}/churn/blobs/sha256:{digest(body)}", content=body)).is_success
    entry = {"path": MANIFEST_PATH, "sha256": digest(body), "size": len(body)}
    assert (await api.post(f"{M}/churn/versions", json={"artifacts": [entry]})).is_success

    # when its archive is asked for, then 409 says why (and the file alone still downloads)
    answer = await api.get(f"{M}/churn/versions/1/archive")
    assert answer.status_code == 409, answer.text
    assert answer.json()["details"]["path"] == MANIFEST_PATH
    alone = await api.get(f"{M}/churn/versions/1/files/{MANIFEST_PATH}")
    assert alone.content == body
