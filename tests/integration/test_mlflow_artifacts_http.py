"""MLflow's artifact proxy API (``/api/2.0/mlflow-artifacts/artifacts``) serving the files
modelreg stores for a version, on real Postgres and the file blob store: listing, download,
MLflow's error envelope, Bearer and Basic auth, scopes, refused writes."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from events.access import Role
from tests.support.api import Api, running_api
from tests.support.database import Database

M = "/api/v1/models"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
V1 = "modelreg/models/churn/versions/1"
FILES = {
    "MLmodel": b"flavors: {}\n",
    "python_model.pkl": b"pickle" * 1000,
    "data/weights.bin": bytes(range(256)) * 64,
    "data/deep/config.json": b"{}",
}


def entry(path: str, body: bytes) -> dict[str, Any]:
    return {"path": path, "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    """churn v1 holds FILES (stored) and notes.txt (external), alias champion; fraud exists."""
    async with running_api(db) as running:
        for name in ("churn", "fraud"):
            assert (await running.post(M, json={"name": name})).status_code == 201
        for body in FILES.values():
            url = f"{M}/churn/blobs/sha256:{hashlib.sha256(body).hexdigest()}"
            assert (await running.put(url, content=body)).status_code == 201
        external = {**entry("notes.txt", b"n"), "external": True, "uri": "s3://b/notes.txt"}
        manifest = [entry(p, b) for p, b in FILES.items()] + [external]
        created = await running.post(f"{M}/churn/versions", json={"artifacts": manifest})
        assert created.status_code == 201, created.text
        alias = await running.put(f"{M}/churn/aliases/champion", json={"version": 1})
        assert alias.status_code == 200, alias.text
        yield running


async def listing(api: Api, path: str, **kwargs: Any) -> Any:
    answer = await api.get(ARTIFACTS, params={"path": path}, **kwargs)
    assert answer.status_code == 200, answer.text
    return answer.json()["files"]


def basic(secret: str, user: str = "anyone") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


# --- listing --------------------------------------------------------------------------------


async def test_the_version_root_lists_its_files_with_sizes_and_its_directories_once(
    api: Api,
) -> None:
    # when the version's root is listed, then files carry their sizes and directories none
    assert await listing(api, V1) == [
        {"path": "MLmodel", "is_dir": False, "file_size": len(FILES["MLmodel"])},
        {"path": "data", "is_dir": True},
        {"path": "notes.txt", "is_dir": False, "file_size": 1},
        {"path": "python_model.pkl", "is_dir": False, "file_size": 6000},
    ]
    # and a sub-directory lists relative to itself, as MLflow's server answers
    assert await listing(api, f"{V1}/data/") == [
        {"path": "deep", "is_dir": True},
        {"path": "weights.bin", "is_dir": False, "file_size": 256 * 64},
    ]


async def test_a_path_naming_a_file_or_nothing_lists_empty(api: Api) -> None:
    # MLflow's client reads an empty listing as "not a directory: download it as a file"
    assert await listing(api, f"{V1}/MLmodel") == []
    assert await listing(api, f"{V1}/nothing/here") == []


async def test_the_version_may_be_named_by_alias(api: Api) -> None:
    files = await listing(api, "modelreg/models/churn/versions/@champion")
    assert [f["path"] for f in files] == ["MLmodel", "data", "notes.txt", "python_model.pkl"]


async def test_a_listing_right_after_an_alias_move_follows_the_move(api: Api) -> None:
    # given churn's champion read once (so its state is cached), then a v2 it moves to
    root = "modelreg/models/churn/versions/@champion"
    assert len(await listing(api, root)) == 4
    body = FILES["MLmodel"]
    created = await api.post(f"{M}/churn/versions", json={"artifacts": [entry("only", body)]})
    assert created.status_code == 201, created.text
    moved = await api.put(f"{M}/churn/aliases/champion", json={"version": 2})
    assert moved.status_code == 200, moved.text
    # when it is listed again at once, then it shows v2's files, not the cached v1's
    assert await listing(api, root) == [{"path": "only", "is_dir": False, "file_size": len(body)}]


# --- download -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(FILES))
async def test_each_file_downloads_whole_with_its_digest_as_etag(api: Api, path: str) -> None:
    got = await api.get(f"{ARTIFACTS}/{V1}/{path}")
    assert got.status_code == 200, got.text
    assert got.content == FILES[path]
    assert got.headers["ETag"] == f'"sha256:{hashlib.sha256(FILES[path]).hexdigest()}"'
    assert got.headers["Content-Length"] == str(len(FILES[path]))


async def test_a_head_of_a_file_gives_its_length_and_digest_without_its_bytes(api: Api) -> None:
    # when a client (fsspec's HTTP file system, a download manager) sizes a file first
    headed = await api.request("HEAD", f"{ARTIFACTS}/{V1}/python_model.pkl")

    # then it gets the GET's length and ETag, and no body
    assert (headed.status_code, headed.content) == (200, b"")
    assert headed.headers["Content-Length"] == str(len(FILES["python_model.pkl"]))
    digest = hashlib.sha256(FILES["python_model.pkl"]).hexdigest()
    assert headed.headers["ETag"] == f'"sha256:{digest}"'


# --- errors in MLflow's envelope ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "field", "rule"),
    [
        ("mlruns/0/abc/artifacts/model", "path", "pattern"),
        ("modelreg/models/churn", "path", "pattern"),
        ("modelreg/models/churn/versions/1/../2/MLmodel", "path", "pattern"),
        ("modelreg/models/churn/versions/1/a\u202egnp.exe", "path", "invisible_character"),
        ("modelreg/models/churn/versions/one", "version", "pattern"),
    ],
)
async def test_a_malformed_path_is_invalid_parameter_value_naming_field_and_rule(
    api: Api, path: str, field: str, rule: str
) -> None:
    # (".." percent-encoded in the URL: HTTP clients resolve a literal one before sending)
    in_url = path.replace("..", "%2E%2E")
    for answer in (
        await api.get(ARTIFACTS, params={"path": path}),
        await api.get(f"{ARTIFACTS}/{in_url}/MLmodel"),
    ):
        assert answer.status_code == 400, answer.text
        assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert (answer.json()["field"], answer.json()["rule"]) == (field, rule)
        assert answer.json()["message"]


async def test_a_listing_without_path_and_a_download_of_a_directory_are_refused(
    api: Api,
) -> None:
    no_path = await api.get(ARTIFACTS)
    assert (no_path.status_code, no_path.json()["rule"]) == (400, "required")
    directory = await api.get(f"{ARTIFACTS}/{V1}")
    assert (directory.status_code, directory.json()["rule"]) == (400, "file")


@pytest.mark.parametrize(
    "path",
    [
        "modelreg/models/nope/versions/1/MLmodel",
        "modelreg/models/churn/versions/9/MLmodel",
        "modelreg/models/churn/versions/@nope/MLmodel",
        f"{V1}/missing.bin",
    ],
)
async def test_what_does_not_exist_is_resource_does_not_exist(api: Api, path: str) -> None:
    answer = await api.get(f"{ARTIFACTS}/{path}")
    assert answer.status_code == 404, answer.text
    assert answer.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


async def test_what_mlflow_calls_deleted_is_not_found(api: Api) -> None:
    # given churn v1 deprecated (MLflow's delete of a version), then fraud archived
    deprecated = await api.post(f"{M}/churn/versions/1/deprecate", json={"reason": "leaky"})
    assert deprecated.status_code == 200, deprecated.text
    external = {**entry("notes.txt", b"n"), "external": True, "uri": "s3://b/notes.txt"}
    fraud = await api.post(f"{M}/fraud/versions", json={"artifacts": [external]})
    assert fraud.status_code == 201, fraud.text
    archived = await api.post(f"{M}/fraud/archive", json={"reason": "unused"})
    assert archived.status_code == 200, archived.text
    # when MLflow asks for their files, then neither exists for it
    for path in (V1, "modelreg/models/fraud/versions/1"):
        answer = await api.get(ARTIFACTS, params={"path": path})
        assert (answer.status_code, answer.json()["error_code"]) == (
            404,
            "RESOURCE_DOES_NOT_EXIST",
        ), answer.text


async def test_an_external_file_is_a_conflict_that_says_where_its_bytes_are(api: Api) -> None:
    answer = await api.get(f"{ARTIFACTS}/{V1}/notes.txt")
    assert answer.status_code == 409, answer.text
    assert answer.json()["error_code"] == "RESOURCE_CONFLICT"
    assert "external" in answer.json()["message"]


# --- authentication and authorisation -------------------------------------------------------


async def test_bearer_and_basic_with_the_token_as_password_both_authenticate(api: Api) -> None:
    reader = await api.token("rita", Role.READER)
    url = f"{ARTIFACTS}/{V1}/MLmodel"
    for headers in ({"Authorization": f"Bearer {reader}"}, basic(reader), basic(reader, "")):
        got = await api.client.get(url, headers=headers)
        assert (got.status_code, got.content) == (200, FILES["MLmodel"])


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Basic !!!"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    ],
    ids=["none", "unknown-bearer", "not-base64", "no-colon"],
)
async def test_a_missing_or_wrong_credential_is_unauthenticated(
    api: Api, headers: dict[str, str]
) -> None:
    answer = await api.client.get(ARTIFACTS, params={"path": V1}, headers=headers)
    assert answer.status_code == 401, answer.text
    assert answer.json()["error_code"] == "UNAUTHENTICATED"


async def test_basic_with_a_wrong_password_is_unauthenticated(api: Api) -> None:
    answer = await api.client.get(ARTIFACTS, params={"path": V1}, headers=basic("wrong"))
    assert (answer.status_code, answer.json()["error_code"]) == (401, "UNAUTHENTICATED")


async def test_a_token_scoped_to_another_model_is_denied_whether_the_model_exists_or_not(
    api: Api,
) -> None:
    # given a reader scoped to fraud
    fraud_only = await api.token("fred", Role.READER, scopes=("fraud",))
    # when it asks for churn's files, or a model that does not exist
    answers = [
        await api.get(ARTIFACTS, params={"path": V1}, as_=fraud_only),
        await api.get(f"{ARTIFACTS}/{V1}/MLmodel", as_=fraud_only),
        await api.get(f"{ARTIFACTS}/modelreg/models/nope/versions/1/x", as_=fraud_only),
    ]
    # then each is denied alike, so a denial tells nothing about what exists
    assert [(a.status_code, a.json()["error_code"]) for a in answers] == [
        (403, "PERMISSION_DENIED")
    ] * 3
    assert answers[1].json()["message"] == answers[2].json()["message"].replace("nope", "churn")


# --- writes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", f"{ARTIFACTS}/{V1}/MLmodel"),
        ("PUT", f"{ARTIFACTS}/mlruns/0/r/artifacts/model.pkl"),
        ("DELETE", f"{ARTIFACTS}/{V1}/MLmodel"),
        ("POST", f"/api/2.0/mlflow-artifacts/mpu/create/{V1}/big.bin"),
    ],
)
async def test_writes_are_refused_naming_modelregs_upload_api(
    api: Api, method: str, path: str
) -> None:
    # when an MLflow client tries to write
    answer = await api.request(method, path, content=b"new bytes")
    # then it is told, without a retryable 5xx, where files go in
    assert answer.status_code == 405, answer.text
    assert answer.json()["error_code"] == "NOT_IMPLEMENTED"
    assert "/api/v1/models/{name}/blobs/sha256:{hex}" in answer.json()["message"]
    # and the version's file is unchanged
    assert (await api.get(f"{ARTIFACTS}/{V1}/MLmodel")).content == FILES["MLmodel"]
