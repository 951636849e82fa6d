"""Model files through the Python client and the CLI against ``modelreg serve`` processes:
upload on registration (only what the model lacks), download verified and resumable,
whole-version archives, retries, a corrupt blob, scoped tokens. One server keeps blobs
under its data dir, the other in S3 on a real S3-compatible server (moto's)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from typer.testing import CliRunner

from events.access import Role
from service.api.router import api_app_kwargs
from service.artifacts.blobstore import blob_key
from service.cli.main import build
from service.client import (
    AsyncClient,
    Client,
    CorruptDownload,
    PermissionDenied,
    RegisteredVersion,
    RetryPolicy,
    Unreachable,
)
from service.client.downloads import PARTIAL_SUFFIX
from tests.support.api import running_api
from tests.support.database import Database
from tests.support.flaky_proxy import FlakyProxy
from tests.support.registry_server import RegistryServer, registry_server
from tests.support.s3_server import s3_server

FAST = RetryPolicy(attempts=4, backoff=0.05, max_backoff=0.2)
BIG = os.urandom(3 * 1024 * 1024 + 17)  # several chunks on the wire and in the store
FILES = {
    "model.bin": BIG,
    "config.json": b'{"lr": 0.1}',
    "tokenizer/vocab.txt": b"a\nb\nc\n",
    "tokenizer/__init__.py": b"",  # empty files travel too
}


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


@pytest.fixture(scope="module")
def s3_backed(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with s3_server(workdir / "moto-client-files.log") as s3, pytest.MonkeyPatch.context() as env:
        for key, value in s3.env().items():
            env.setenv(key, value)  # the serve process inherits them
        bucket = s3.new_bucket()
        with registry_server(
            database_url, nats_url, workdir, artifacts_url=f"s3://{bucket}/registry"
        ) as running:
            yield running


def files_in(root: Path, files: dict[str, bytes] = FILES) -> Path:
    for path, body in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(body)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_into(received: bytearray, response: httpx.Response) -> None:
    for chunk in response.iter_bytes():
        received += chunk


def register(reg: Client, model: str, out: Path, **options: Any) -> RegisteredVersion:
    return reg.register_version(model, artifacts_dir=out, code=None, dependencies=None, **options)


def test_files_round_trip_through_s3_by_number_alias_and_stage(
    s3_backed: RegistryServer, tmp_path: Path
) -> None:
    # given a directory of model files
    out = files_in(tmp_path / "out")

    with Client(s3_backed.url, s3_backed.admin_token, retry=FAST, progress=True) as reg:
        # when it is registered (with progress bars drawn from the parallel transfers): every file is uploaded, the manifest names stored blobs
        done = reg.register_version("churn", artifacts_dir=out, code=None, dependencies=None)
        assert done.model_created and done.version == 1
        assert sorted((f.path, f.action) for f in done.files) == [
            ("config.json", "uploaded"),
            ("model.bin", "uploaded"),
            ("tokenizer/__init__.py", "uploaded"),
            ("tokenizer/vocab.txt", "uploaded"),
        ]
        row = reg.get_version("churn", 1)
        assert row.content is not None
        assert {(a.path, a.sha256, a.size, a.external, a.uri) for a in row.content.artifacts} == {
            (p, hashlib.sha256(b).hexdigest(), len(b), False, "") for p, b in FILES.items()
        }
        reg.set_alias("churn", "champion", 1)
        reg.transition("churn", 1, "staging")

        # then it comes back byte for byte, by number, alias and stage
        for ref, where in ((1, "n"), ("champion", "a"), ("@champion", "b"), ("stage:staging", "s")):
            fetched = reg.download("churn", ref, tmp_path / where)
            assert fetched.version == 1 and fetched.external == []
            assert tree(tmp_path / where) == FILES, ref
            assert {f.action for f in fetched.files} == {"downloaded"}
        # and a second download into the same place fetches nothing
        again = reg.download("churn", 1, tmp_path / "n")
        assert {f.action for f in again.files} == {"present"}


def test_a_second_registration_of_the_same_files_uploads_nothing(
    server: RegistryServer, tmp_path: Path
) -> None:
    out = files_in(tmp_path / "out")
    with FlakyProxy(server.url) as proxy, Client(proxy.url, server.admin_token, retry=FAST) as reg:
        # given a version registered from the directory
        first = register(reg, "dedup", out)
        assert len(proxy.seen("PUT /api/v1/models/dedup/blobs/")) == len(FILES)

        # when the same files (one of them twice) are registered again
        (out / "copy-of-config.json").write_bytes(FILES["config.json"])
        second = reg.register_version("dedup", artifacts_dir=out, code=None, dependencies=None)

        # then no byte is sent again: the client asked, and the model had them all
        assert len(proxy.seen("PUT /api/v1/models/dedup/blobs/")) == len(FILES)
        assert {f.action for f in second.files} == {"stored"}
        assert (first.version, second.version) == (1, 2)
        assert len(second.files) == len(FILES) + 1


def test_transfers_are_retried_after_a_dropped_connection_and_a_503(
    server: RegistryServer, tmp_path: Path
) -> None:
    out = files_in(tmp_path / "out", {"model.bin": BIG})
    digest = hashlib.sha256(BIG).hexdigest()
    put = f"PUT /api/v1/models/flaky/blobs/sha256:{digest} ".encode()
    with FlakyProxy(server.url) as proxy, Client(proxy.url, server.admin_token, retry=FAST) as reg:
        reg.create_model("flaky")
        # given a server that is busy once, then stores the blob but the answer is lost
        proxy.fail_requests(1, match=put, status=503)
        proxy.drop_responses(1, match=put)

        # when the files are registered
        done = reg.register_version("flaky", artifacts_dir=out, code=None, dependencies=None)

        # then the PUT was sent three times, whole each time, and the version is complete
        puts = proxy.seen(put.decode())
        assert len(puts) == 3 and all(len(p.body) == len(BIG) for p in puts)
        assert b" 201 " in proxy.dropped[0].split(b"\r\n", 1)[0]  # the lost answer stored it
        assert [f.action for f in done.files] == ["uploaded"]

        # and a download whose answer is lost is asked for again, and lands whole
        get = f"GET /api/v1/models/flaky/versions/{done.version}/files/model.bin "
        proxy.drop_responses(1, match=get.encode())
        assert reg.download("flaky", done.version, tmp_path / "m").files[0].action == "downloaded"
        assert len(proxy.seen(get)) == 2 and len(proxy.dropped) == 2
        assert (tmp_path / "m" / "model.bin").read_bytes() == BIG


def test_an_interrupted_download_resumes_with_a_range_and_a_wrong_prefix_is_not_kept(
    server: RegistryServer, tmp_path: Path
) -> None:
    out = files_in(tmp_path / "out", {"model.bin": BIG})
    with FlakyProxy(server.url) as proxy, Client(proxy.url, server.admin_token, retry=FAST) as reg:
        version = register(reg, "resume", out).version
        dest = tmp_path / "m"
        dest.mkdir()
        partial = dest / ("model.bin" + PARTIAL_SUFFIX)

        # given the first 40% of the file from an interrupted download
        cut = len(BIG) * 4 // 10
        partial.write_bytes(BIG[:cut])

        # when it is downloaded again
        done = reg.download("resume", version, dest)

        # then only the rest was asked for, and the whole file is there, verified
        (get,) = proxy.seen("GET /api/v1/models/resume/versions/1/files/model.bin ")
        assert get.header("Range") == f"bytes={cut}-"
        assert get.header("If-Range") == f'"sha256:{hashlib.sha256(BIG).hexdigest()}"'
        assert done.files[0].action == "downloaded"
        assert (dest / "model.bin").read_bytes() == BIG and not partial.exists()

        # given a partial file whose bytes are not the file's
        (dest / "model.bin").unlink()
        partial.write_bytes(b"X" * cut)
        # when it is resumed, then the whole fails its digest and nothing is kept
        with pytest.raises(CorruptDownload, match="nothing was kept"):
            reg.download("resume", version, dest)
        assert not partial.exists() and not (dest / "model.bin").exists()
        # and the next try starts from zero and succeeds
        reg.download("resume", version, dest)
        assert (dest / "model.bin").read_bytes() == BIG


def test_a_corrupt_blob_fails_the_download_and_the_archive_and_writes_nothing(
    server: RegistryServer, tmp_path: Path
) -> None:
    # given a version whose big file is flipped on disk after it was stored (bytes of its
    # own: blobs are shared, other tests must not meet this one)
    rotten = os.urandom(len(BIG))
    out = files_in(tmp_path / "out", {**FILES, "model.bin": rotten})
    with Client(server.url, server.admin_token, retry=FAST) as reg:
        version = register(reg, "rotten", out).version
    blob = server.log.parent / blob_key(hashlib.sha256(rotten).hexdigest())
    blob.chmod(0o644)
    with blob.open("r+b") as handle:
        handle.seek(len(rotten) // 2)
        handle.write(bytes([rotten[len(rotten) // 2] ^ 0xFF]))

    with Client(server.url, server.admin_token, retry=FAST) as reg:
        # when the files are downloaded: an error, and the bad file never lands
        with pytest.raises(Unreachable, match="broke off"):
            reg.download("rotten", version, tmp_path / "m")
        assert not (tmp_path / "m" / "model.bin").exists()
        # when the version is fetched as an archive: an error, and no archive file
        for fmt in ("tar", "zip"):
            target = tmp_path / f"rotten.{fmt}"
            with pytest.raises(Unreachable, match="broke off"):
                reg.download_archive("rotten", version, target, format=fmt)
            assert not target.exists()
            assert not target.with_name(target.name + PARTIAL_SUFFIX).exists()

    # and on the wire the archive stream is cut short, never completed
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    for fmt in ("tar", "zip"):
        received = bytearray()
        with (
            httpx.Client(base_url=server.url, headers=headers, timeout=30) as http,
            http.stream(
                "GET", f"/api/v1/models/rotten/versions/{version}/archive?format={fmt}"
            ) as response,
        ):
            assert response.status_code == 200
            announced = response.headers.get("content-length")
            with pytest.raises(httpx.RemoteProtocolError):
                read_into(received, response)
        # a tar stops short of its length; a zip never becomes a whole archive (random file
        # bytes may hold the end-record signature by chance: read it as a zip instead)
        assert announced is None or len(received) < int(announced)
        assert fmt == "tar" or not whole_zip(bytes(received))


def whole_zip(data: bytes) -> bool:
    """Whether ``data`` reads as a zip whose every member, model.bin included, checks out."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "model.bin" in archive.namelist() and archive.testzip() is None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


def test_archives_through_the_client_hold_every_file(
    server: RegistryServer, tmp_path: Path
) -> None:
    out = files_in(tmp_path / "out")
    with Client(server.url, server.admin_token, retry=FAST) as reg:
        version = register(reg, "packed", out).version
        reg.set_alias("packed", "champion", version)
        tar_path = reg.download_archive("packed", "@champion", tmp_path / "v.tar")
        zip_path = reg.download_archive("packed", version, tmp_path / "v.zip", format="zip")
    with tarfile.open(tar_path) as archive:
        for path, body in FILES.items():
            member = archive.extractfile(path)
            assert member is not None and member.read() == body
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.testzip() is None
        assert {p: archive.read(p) for p in FILES} == FILES
        manifest = json.loads(archive.read(".modelreg/manifest.json"))
        assert {f["path"] for f in manifest["files"]} == set(FILES)


def test_a_token_scoped_to_another_model_can_neither_upload_nor_download(
    server: RegistryServer, tmp_path: Path
) -> None:
    out = files_in(tmp_path / "out")
    with Client(server.url, server.admin_token) as admin:
        version = register(admin, "guarded", out).version
        admin.create_model("elsewhere")
        scoped = admin.create_token("mallory", [Role.CONTRIBUTOR], scopes=["elsewhere"])
    assert scoped.secret is not None
    with Client(server.url, scoped.secret, retry=FAST) as mallory:
        # when the scoped token uploads into, or downloads from, the other model
        with pytest.raises(PermissionDenied):
            register(mallory, "guarded", files_in(tmp_path / "new", {"x.bin": b"x"}))
        with pytest.raises(PermissionDenied):
            register(mallory, "guarded", out, create_model=False)
        with pytest.raises(PermissionDenied):
            mallory.download("guarded", version, tmp_path / "stolen")
        with pytest.raises(PermissionDenied):
            mallory.download_archive("guarded", version, tmp_path / "stolen.tar")
        # then nothing was written, and its own model works
        assert not any((tmp_path / "stolen").glob("**/*.bin"))
        assert not (tmp_path / "stolen.tar").exists()
        own = register(mallory, "elsewhere", out)
        assert own.version == 1


def test_the_cli_uploads_on_register_and_downloads_by_alias_stage_and_number(
    server: RegistryServer, tmp_path: Path
) -> None:
    out = files_in(tmp_path / "out")
    app = build()
    env = server.env(COLUMNS="200", MODELREG_RETRIES="2")

    def run(*args: str) -> str:
        result = CliRunner().invoke(app, list(args), env=env)
        assert result.exit_code == 0, f"{result.stdout}\n{result.stderr}"
        return result.stdout

    # when the directory is registered twice from a shell
    first = run("versions", "register", "cli-files", str(out), "--no-code")
    assert "registered cli-files v1 (created model cli-files)" in first
    assert f"uploaded 4 of 4 files ({sum(map(len, FILES.values())):,} bytes)" in first
    second = json.loads(run("versions", "register", "cli-files", str(out), "--no-code", "--json"))
    # then the second uploads nothing, and says so to machines too
    assert {f["action"] for f in second["files"]} == {"stored"}
    external = json.loads(
        run("versions", "register", "cli-files", str(out), "--no-code", "--external", "--json")
    )
    assert external["files"] == []
    run("alias", "set", "cli-files", "champion", "2")
    run("stage", "cli-files", "2", "staging")

    # when a version is downloaded by alias, stage, number and as the latest
    table = run("versions", "download", "cli-files@champion", str(tmp_path / "a"))
    assert "4 of 4 files downloaded" in table and "model.bin" in table
    assert tree(tmp_path / "a") == FILES
    by_stage = json.loads(
        run("versions", "download", "cli-files:staging", str(tmp_path / "s"), "--json")
    )
    assert by_stage["version"] == 2 and tree(tmp_path / "s") == FILES
    assert json.loads(run("versions", "download", "cli-files/1", str(tmp_path / "a"), "--json"))[
        "files"
    ][0]["action"] == ("present")
    latest = json.loads(run("versions", "download", "cli-files", str(tmp_path / "l"), "--json"))
    # the latest (v3) is external: its files are listed, not fetched
    assert latest["version"] == 3 and latest["files"] == []
    assert {e["path"] for e in latest["external"]} == set(FILES)

    # and a malformed reference is a usage error
    bad = CliRunner().invoke(app, ["versions", "download", "cli-files@", str(tmp_path)], env=env)
    assert bad.exit_code == 2


async def test_the_async_client_uploads_and_downloads_in_process(
    db: Database, tmp_path: Path
) -> None:
    out = files_in(tmp_path / "out")
    async with running_api(db) as api:
        app = Litestar(**api_app_kwargs(api.services))
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with AsyncClient("http://modelreg.test", api.admin, transport=transport) as reg:
            # when a directory is registered twice, then downloaded and archived
            first = await reg.register_version("async-files", artifacts_dir=out, code=None)
            again = await reg.register_version("async-files", artifacts_dir=out, code=None)
            fetched = await reg.download("async-files", first.version, tmp_path / "m")
            archive = await reg.download_archive(
                "async-files", f"{again.version}", tmp_path / "v.zip", format="zip"
            )

    # then the first uploaded everything, the second nothing, and the bytes came back
    assert {f.action for f in first.files} == {"uploaded"}
    assert {f.action for f in again.files} == {"stored"}
    assert {f.action for f in fetched.files} == {"downloaded"}
    assert tree(tmp_path / "m") == FILES
    with zipfile.ZipFile(archive) as unpacked:
        assert {p: unpacked.read(p) for p in FILES} == FILES
