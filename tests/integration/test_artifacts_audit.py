"""``modelreg audit artifacts``: re-hashing, missing/corrupt/orphan reports, and garbage
collection that never deletes a blob a version names, on real Postgres and each blob
store (the file store, and S3 on moto's server). The races between the collector and a
registration or an upload are forced in order, not left to timing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import obstore
import pytest
from typer.testing import CliRunner, Result

from events.access import Role
from events.blob_collection import BlobDeleted
from events.errors import ValidationError
from events.model.commands import RegisterVersion
from events.model.decider import MODEL
from events.streams import BLOB_COLLECTIONS_STREAM, model_stream
from events.version_content import ArtifactEntry, VersionContent
from service.artifacts.audit import audit_blobs, read_ledger
from service.artifacts.blobstore import BlobStoreUnavailableError, blob_key
from service.artifacts.collect import collect, collect_blob
from service.artifacts.inventory import inventory_of
from service.artifacts.local import INCOMING, LocalBlobStore
from service.artifacts.service import store_blob, with_stored_blobs
from service.cli.audit import app
from service.settings import load_settings
from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.s3_server import S3Server, s3_server
from tests.support.waiting import eventually

M = "/api/v1/models"
KEPT = b"kept:" + bytes(range(256)) * 512
ORPHANED = b"orphan:" + bytes(range(256)) * 300
GRACE = timedelta(days=7)


def hex_of(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def entry(body: bytes, path: str = "model.bin") -> dict[str, Any]:
    return {"path": path, "sha256": hex_of(body), "size": len(body)}


@pytest.fixture(scope="module")
def s3(workdir: Path) -> Iterator[S3Server]:
    with s3_server(workdir / "moto-audit.log") as server:
        yield server


@pytest.fixture(params=["file", "s3"])
async def api(
    request: pytest.FixtureRequest, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    env = {
        "MODELREG_DATABASE_URL": db.url,
        "MODELREG_DB_SCHEMA": db.schema,
        "MODELREG_DB_APP_ROLE": db.app_role,
        "MODELREG_DATA_DIR": str(tmp_path),
    }
    url = None
    if request.param == "s3":
        server: S3Server = request.getfixturevalue("s3")
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        url = f"s3://{server.new_bucket()}/registry"
        env["MODELREG_ARTIFACTS_URL"] = url
    settings = load_settings(
        {}, db_schema=db.schema, read_wait_timeout=10.0, data_dir=tmp_path, artifacts_url=url
    )
    async with running_api(db, settings) as running:
        running.cli_env = env  # type: ignore[attr-defined]
        assert (await running.post(M, json={"name": "churn"})).status_code == 201
        yield running


async def upload(api: Api, body: bytes, model: str = "churn") -> None:
    answer = await api.put(f"{M}/{model}/blobs/sha256:{hex_of(body)}", content=body)
    assert answer.status_code in (200, 201), answer.text


async def register(api: Api, *bodies: bytes) -> Any:
    artifacts = [entry(b, f"file-{i}.bin") for i, b in enumerate(bodies)]
    return await api.post(f"{M}/churn/versions", json={"artifacts": artifacts})


async def audit(api: Api, *args: str) -> Result:
    env: dict[str, str] = api.cli_env  # type: ignore[attr-defined]
    return await asyncio.to_thread(
        lambda: CliRunner().invoke(app, ["artifacts", "--json", *args], env=env)
    )


def report_of(result: Result) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def by_status(report: dict[str, Any], status: str) -> list[str]:
    return [f["digest"] for f in report["findings"] if f["status"] == status]


async def overwrite(api: Api, sha256: str, body: bytes) -> None:
    """Damage a stored blob behind the registry's back."""
    blobs = api.services.blobs
    if isinstance(blobs, LocalBlobStore):
        path = blobs.path_of(sha256)
        path.chmod(0o644)
        path.write_bytes(body)
        return
    await obstore.put_async(blobs.object_store, blob_key(sha256), body)  # type: ignore[attr-defined]


async def remove(api: Api, sha256: str) -> None:
    blobs = api.services.blobs
    if isinstance(blobs, LocalBlobStore):
        blobs.path_of(sha256).unlink()
        return
    await obstore.delete_async(blobs.object_store, blob_key(sha256))  # type: ignore[attr-defined]


# --- the report ---------------------------------------------------------------------------


async def test_an_intact_store_reports_its_orphans_and_exits_0(api: Api) -> None:
    # given a registered version's blob and an upload no version names
    await upload(api, KEPT)
    await upload(api, ORPHANED)
    assert (await register(api, KEPT)).status_code == 201

    # when the store is audited
    result = await audit(api)

    # then everything was re-hashed, nothing is wrong, and the orphan is listed with its age
    assert result.exit_code == 0, result.output
    report = report_of(result)
    assert (report["blobs_held"], report["blobs_checked"]) == (2, 2)
    assert report["bytes_checked"] == len(KEPT) + len(ORPHANED)
    assert by_status(report, "orphan") == [f"sha256:{hex_of(ORPHANED)}"]
    [orphan] = report["findings"]
    assert orphan["stored_for"] == ["churn"]
    assert 0 <= orphan["age_seconds"] < 3600


async def test_corrupt_and_missing_blobs_name_the_versions_and_exit_1(api: Api) -> None:
    # given two registered blobs, one then damaged and one deleted behind the registry's back
    await upload(api, KEPT)
    await upload(api, ORPHANED)
    assert (await register(api, KEPT, ORPHANED)).status_code == 201
    await overwrite(api, hex_of(KEPT), b"flipped" + KEPT[7:])
    await remove(api, hex_of(ORPHANED))

    # when the store is audited
    result = await audit(api)

    # then both are reported with the version and path that name them, and it exits 1
    assert result.exit_code == 1, result.output
    report = report_of(result)
    [corrupt] = [f for f in report["findings"] if f["status"] == "corrupt"]
    [missing] = [f for f in report["findings"] if f["status"] == "missing"]
    assert corrupt["digest"] == f"sha256:{hex_of(KEPT)}"
    assert corrupt["referenced_by"] == ["churn@1:file-0.bin"]
    assert "hash to" in corrupt["detail"]
    assert missing["digest"] == f"sha256:{hex_of(ORPHANED)}"
    assert missing["referenced_by"] == ["churn@1:file-1.bin"]


async def test_a_sample_re_hashes_only_that_many_blobs(api: Api) -> None:
    # given three stored blobs
    for body in (KEPT, ORPHANED, b"third"):
        await upload(api, body)

    # when one is sampled, then one blob was read and the report says it sampled
    report = report_of(await audit(api, "--sample", "1"))
    assert (report["blobs_held"], report["blobs_checked"], report["sampled"]) == (3, 1, True)


async def test_a_bad_grace_period_cannot_start(api: Api) -> None:
    result = await audit(api, "--gc", "--grace", "a week")
    assert result.exit_code == 2
    assert "--grace" in result.output


# --- garbage collection -------------------------------------------------------------------


async def test_gc_deletes_only_orphans_past_the_grace_period_and_records_each(api: Api) -> None:
    # given a referenced blob and an orphan
    await upload(api, KEPT)
    await upload(api, ORPHANED)
    assert (await register(api, KEPT)).status_code == 201

    # when collected with a week of grace, then the fresh orphan is kept
    report = report_of(await audit(api, "--gc", "--grace", "7d"))
    assert report["collected"] == []
    assert await api.services.blobs.size_of(hex_of(ORPHANED)) == len(ORPHANED)

    # when collected with no grace, then only the orphan is deleted, and recorded
    report = report_of(await audit(api, "--gc", "--grace", "0s"))
    assert report["collected"] == [f"sha256:{hex_of(ORPHANED)}"]
    assert await api.services.blobs.size_of(hex_of(ORPHANED)) is None
    assert await api.services.blobs.size_of(hex_of(KEPT)) == len(KEPT)
    recorded = await api.services.store.read_stream(BLOB_COLLECTIONS_STREAM)
    assert [e.envelope.actor.split(":")[0] for e in recorded] == ["modelreg-gc"]
    [deleted] = [api.services.store.codec.decode(e.envelope) for e in recorded]
    assert isinstance(deleted, BlobDeleted)
    assert (deleted.sha256, deleted.size, deleted.stored_for) == (
        hex_of(ORPHANED),
        len(ORPHANED),
        (await api.services.registry.model_id("churn"),),
    )
    # and a later audit finds nothing wrong and nothing orphaned
    after = await audit(api)
    assert after.exit_code == 0, after.output
    assert report_of(after)["findings"] == []


async def test_a_collected_blob_must_be_uploaded_again_before_a_version_names_it(
    api: Api,
) -> None:
    # given an orphan collected
    await upload(api, ORPHANED)
    assert report_of(await audit(api, "--gc", "--grace", "0s"))["collected"]

    # when a version names it, then 422 says it was collected
    refused = await register(api, ORPHANED)
    assert refused.status_code == 422, refused.text
    assert (refused.json()["field"], refused.json()["rule"]) == (
        "artifacts[0].sha256",
        "blob_not_stored",
    )
    # and once uploaded again, the version is registered and its file served
    await upload(api, ORPHANED)
    assert (await register(api, ORPHANED)).status_code == 201
    served = await api.get(f"{M}/churn/versions/1/files/file-0.bin")
    assert served.content == ORPHANED


async def test_stale_upload_leftovers_are_swept(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a file store holding a file a killed upload left behind, a day old (S3 keeps
    # no leftovers under the blob keys: an unfinished multipart upload is not an object)
    settings = load_settings({}, db_schema=db.schema, data_dir=tmp_path)
    async with running_api(db, settings) as api:
        api.cli_env = {  # type: ignore[attr-defined]
            "MODELREG_DATABASE_URL": db.url,
            "MODELREG_DB_SCHEMA": db.schema,
            "MODELREG_DB_APP_ROLE": db.app_role,
            "MODELREG_DATA_DIR": str(tmp_path),
        }
        incoming = tmp_path / INCOMING
        incoming.mkdir(parents=True, exist_ok=True)
        leftover = incoming / "abandoned"
        leftover.write_bytes(b"half an upload")
        day_ago = (datetime.now(UTC) - timedelta(days=1)).timestamp()
        os.utime(leftover, (day_ago, day_ago))
        fresh = incoming / "in-progress"
        fresh.write_bytes(b"being written")

        # when collected with an hour of grace
        report = report_of(await audit(api, "--gc", "--grace", "1h"))

    # then both are listed, and only the stale one is swept
    assert sorted(i["key"] for i in report["incoming"]) == [
        f"{INCOMING}/abandoned",
        f"{INCOMING}/in-progress",
    ]
    assert report["swept"] == [f"{INCOMING}/abandoned"]
    assert not leftover.exists()
    assert fresh.exists()


# --- the races, forced in order -----------------------------------------------------------


async def test_a_version_registered_after_the_audit_looked_keeps_its_blob(api: Api) -> None:
    # given the collector's view: an orphan past its grace period
    await upload(api, ORPHANED)
    services = api.services
    ledger = await read_ledger(services.store, services.executor)
    later = datetime.now(UTC) + timedelta(days=30)
    inventory = inventory_of(services.blobs)
    report = await audit_blobs(ledger, services.blobs, inventory, now=later)
    assert [f.status for f in report.findings] == ["orphan"]

    # when a version naming it commits before the collector takes the lock
    assert (await register(api, ORPHANED)).status_code == 201
    await collect(
        report, services.store, services.executor, inventory, grace=GRACE, now=later, actor="gc"
    )

    # then the second look under the lock keeps it: nothing deleted, nothing recorded
    assert report.collected == []
    assert "names it" in report.kept[0]
    assert await services.blobs.size_of(hex_of(ORPHANED)) == len(ORPHANED)
    assert await services.store.read_stream(BLOB_COLLECTIONS_STREAM) == []


async def test_a_registration_that_checked_before_a_deletion_cannot_commit_after_it(
    api: Api,
) -> None:
    # given an orphan, and a registration that has checked the manifest rule already
    await upload(api, ORPHANED)
    services = api.services
    model_id = await services.registry.model_id("churn")
    later = datetime.now(UTC) + timedelta(days=30)
    attempts: list[object] = []

    async def write(guards: Any) -> Any:
        attempts.append(guards)
        if len(attempts) == 1:
            # when the collector deletes the blob between that check and the append
            await collect_blob(
                services.store,
                services.executor,
                inventory_of(services.blobs),
                sha256=hex_of(ORPHANED),
                size=len(ORPHANED),
                age_seconds=int(GRACE.total_seconds()) * 4,
                grace=GRACE,
                now=later,
                actor="gc",
            )
        content = VersionContent(
            artifacts=(ArtifactEntry(path="m.bin", sha256=hex_of(ORPHANED), size=len(ORPHANED)),)
        )
        command = RegisterVersion(actor="alice", now=services.registry.now(), content=content)
        return await services.registry.execute(model_id, command, guards=guards)

    manifest = [ArtifactEntry(path="m.bin", sha256=hex_of(ORPHANED), size=len(ORPHANED))]
    # then the guarded append fails, the check runs again and refuses: the blob is gone
    with pytest.raises(ValidationError) as refused:
        await with_stored_blobs(services.registry, services.blobs, model_id, manifest, write)
    assert refused.value.rule == "blob_not_stored"
    assert len(attempts) == 1
    _, state = await services.registry.executor.state_of(model_stream(model_id), MODEL)
    assert len(state.versions) == 0 and list(state.versions) == []


async def test_a_registration_arriving_while_the_collector_holds_the_lock_waits_and_is_refused(
    api: Api,
) -> None:
    # given an orphan being collected: deletion recorded and bytes deleted, not yet committed
    await upload(api, ORPHANED)
    services = api.services
    registering: list[asyncio.Task[Any]] = []

    async def waiting_for_a_lock() -> bool:
        # This schema's guard locks only (eventlog.store keys them by schema and stream):
        # other tests on the cluster take advisory locks too.
        waiting = await services.pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND objsubid = 2 AND database = (SELECT oid FROM pg_database"
            " WHERE datname = current_database()) AND classid::bigint ="
            " (hashtext('modelreg-guard:' || current_schema())::bigint & 4294967295)"
        )
        return bool(waiting)

    async def while_locked() -> None:
        # when a version naming it is registered at that moment
        registering.append(asyncio.create_task(register(api, ORPHANED)))
        await eventually(waiting_for_a_lock, what="the registration waits for the lock")

    await collect_blob(
        services.store,
        services.executor,
        inventory_of(services.blobs),
        sha256=hex_of(ORPHANED),
        size=len(ORPHANED),
        age_seconds=int(GRACE.total_seconds()) * 4,
        grace=GRACE,
        now=datetime.now(UTC) + timedelta(days=30),
        actor="gc",
        under_lock=while_locked,
    )

    # then it waited for the commit, saw the deletion, and was refused: no version names
    # deleted bytes
    refused = await registering[0]
    assert refused.status_code == 422, refused.text
    assert refused.json()["rule"] == "blob_not_stored"
    assert "garbage-collected" in refused.json()["detail"]
    assert (await api.get(f"{M}/churn/versions/1")).status_code == 404


async def test_an_upload_whose_bytes_are_collected_before_it_is_recorded_answers_retry(
    api: Api,
) -> None:
    # given an orphan the store holds, uploaded again: the store writes nothing new
    await upload(api, ORPHANED)
    services = api.services
    model_id = await services.registry.model_id("churn")
    later = datetime.now(UTC) + timedelta(days=30)

    async def body() -> AsyncIterator[bytes]:
        yield ORPHANED
        # when the collector deletes it after the bytes arrived, before they are recorded
        await collect_blob(
            services.store,
            services.executor,
            inventory_of(services.blobs),
            sha256=hex_of(ORPHANED),
            size=len(ORPHANED),
            age_seconds=int(GRACE.total_seconds()) * 4,
            grace=GRACE,
            now=later,
            actor="gc",
        )

    # then the upload answers "retry" (503) instead of claiming bytes that are gone
    with pytest.raises(BlobStoreUnavailableError, match="garbage-collected"):
        await store_blob(
            services.registry,
            services.blobs,
            model_id=model_id,
            actor="alice",
            sha256=hex_of(ORPHANED),
            body=body(),
            max_bytes=1 << 30,
        )
    # and uploaded again, the bytes are stored anew
    await upload(api, ORPHANED)
    assert await services.blobs.size_of(hex_of(ORPHANED)) == len(ORPHANED)


async def test_the_collector_refuses_a_blob_inside_its_grace_period(api: Api) -> None:
    await upload(api, ORPHANED)
    with pytest.raises(ValidationError) as refused:
        await collect_blob(
            api.services.store,
            api.services.executor,
            inventory_of(api.services.blobs),
            sha256=hex_of(ORPHANED),
            size=len(ORPHANED),
            age_seconds=60,
            grace=GRACE,
            now=datetime.now(UTC),
            actor="gc",
        )
    assert refused.value.rule == "grace_period"
    assert await api.services.blobs.size_of(hex_of(ORPHANED)) == len(ORPHANED)


async def test_admins_can_audit_over_http_and_nobody_else(api: Api) -> None:
    # given a stored file damaged behind the registry's back
    await upload(api, KEPT)
    assert (await register(api, KEPT)).status_code == 201
    await overwrite(api, hex_of(KEPT), b"flipped" + KEPT[7:])

    # when an admin asks, then the report names the corrupt blob and its version
    report = await api.get("/api/v1/audit/artifacts")
    assert report.status_code == 200, report.text
    [finding] = report.json()["findings"]
    assert (finding["status"], finding["referenced_by"]) == ("corrupt", ["churn@1:file-0.bin"])
    # and a contributor of that very model is refused: the report spans every model
    contributor = await api.token("carol", Role.CONTRIBUTOR)
    refused = await api.get("/api/v1/audit/artifacts", headers=api.auth(contributor))
    assert refused.status_code == 403, refused.text
    bad = await api.get("/api/v1/audit/artifacts?sample=0")
    assert (bad.status_code, bad.json()["field"]) == (400, "sample")
