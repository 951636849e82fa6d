"""MLflow's own client (``MlflowClient``, mlflow 3.17.2) against a running ``modelreg serve``:
registered models, versions, tags, aliases, stages, searches with paging, download URIs,
governance, retried creates and both ways MLflow authenticates."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import RestException

from tests.support.flaky_proxy import FlakyProxy
from tests.support.nats_servers import connect
from tests.support.policies import PERMISSIVE_POLICY_BODY
from tests.support.registry_server import RegistryServer, registry_server
from tests.support.waiting import eventually

MLFLOW = "/api/2.0/mlflow"
# MLflow deprecated stages (2.9) and warns on every transition; they are part of its API.
pytestmark = pytest.mark.filterwarnings("ignore:.*stages:FutureWarning")


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        response = httpx.put(
            f"{running.url}/api/v1/policy",
            json={"policy": PERMISSIVE_POLICY_BODY, "comment": "tests move stages directly"},
            headers=_bearer(running.admin_token),
        )
        assert response.status_code == 200, response.text
        yield running


@pytest.fixture(autouse=True)
def mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials leak in from the environment; retries are quick (as many as MLflow's)."""
    for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def token(server: RegistryServer, principal: str, *roles: str, scopes: tuple[str, ...] = ()) -> str:
    response = httpx.post(
        f"{server.url}/api/v1/tokens",
        json={"principal": principal, "roles": list(roles), "scopes": list(scopes)},
        headers=_bearer(server.admin_token),
    )
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    return secret


def client_as(
    server: RegistryServer, secret: str, monkeypatch: pytest.MonkeyPatch, url: str | None = None
) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", secret)
    return MlflowClient(tracking_uri=url or server.url, registry_uri=url or server.url)


@pytest.fixture
def mlflow(server: RegistryServer, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    return client_as(server, token(server, "trainer", "admin"), monkeypatch)


def error_code(failed: pytest.ExceptionInfo[RestException]) -> str:
    code: str = failed.value.error_code
    return code


def test_registered_models_are_created_read_updated_tagged_renamed_and_deleted(
    mlflow: MlflowClient,
) -> None:
    # given a model created through MLflow with tags and a description
    created = mlflow.create_registered_model(
        "mf-churn", tags={"team": "risk"}, description="churn model"
    )
    assert (created.name, created.description, created.tags) == (
        "mf-churn",
        "churn model",
        {"team": "risk"},
    )
    # when it is described, tagged and renamed
    mlflow.update_registered_model("mf-churn", description="v2 of the churn model")
    mlflow.set_registered_model_tag("mf-churn", "owner", "ana")
    mlflow.delete_registered_model_tag("mf-churn", "team")
    mlflow.delete_registered_model_tag("mf-churn", "never-set")  # a no-op, as in MLflow
    mlflow.rename_registered_model("mf-churn", "mf-churn-2")
    # then reads show every change, with the caller as the user and int64 ms timestamps
    model = mlflow.get_registered_model("mf-churn-2")
    assert (model.description, model.tags) == ("v2 of the churn model", {"owner": "ana"})
    assert model.last_updated_timestamp >= model.creation_timestamp > 1_700_000_000_000
    with pytest.raises(RestException) as old:
        mlflow.get_registered_model("mf-churn")
    assert error_code(old) == "RESOURCE_DOES_NOT_EXIST"
    # and a duplicate name is RESOURCE_ALREADY_EXISTS (status 400, as MLflow answers it)
    with pytest.raises(RestException) as taken:
        mlflow.create_registered_model("mf-churn-2")
    assert error_code(taken) == "RESOURCE_ALREADY_EXISTS"
    # when it is deleted, MLflow callers no longer see it
    mlflow.delete_registered_model("mf-churn-2")
    with pytest.raises(RestException) as gone:
        mlflow.get_registered_model("mf-churn-2")
    assert error_code(gone) == "RESOURCE_DOES_NOT_EXIST"
    assert mlflow.search_registered_models(filter_string="name = 'mf-churn-2'") == []
    # and its name stays taken: the history is kept, an admin may restore it
    with pytest.raises(RestException) as kept:
        mlflow.create_registered_model("mf-churn-2", description="again")
    assert error_code(kept) == "RESOURCE_ALREADY_EXISTS"
    assert "restore" in kept.value.message
    # even when the same create is sent again within the retry window
    mlflow.create_registered_model("mf-once")
    mlflow.delete_registered_model("mf-once")
    with pytest.raises(RestException) as again:
        mlflow.create_registered_model("mf-once")
    assert error_code(again) == "RESOURCE_ALREADY_EXISTS"


def test_versions_carry_source_run_and_user_and_deleted_numbers_are_never_reused(
    mlflow: MlflowClient,
) -> None:
    # given a model with three versions registered from MLflow runs
    mlflow.create_registered_model("mf-fraud")
    for n in range(1, 4):
        version = mlflow.create_model_version(
            "mf-fraud",
            source=f"s3://bucket/runs/r{n}/artifacts/model",
            run_id=f"r{n}",
            tags={"n": str(n)},
            description=f"version {n}",
        )
        assert (version.version, version.current_stage, version.status) == (
            str(n),
            "None",
            "READY",
        )
    # (a create answers what a read shows afterwards, timestamps included)
    read = mlflow.get_model_version("mf-fraud", "3")
    assert (read.creation_timestamp, read.source, read.run_id, read.tags) == (
        version.creation_timestamp,
        version.source,
        version.run_id,
        version.tags,
    )
    # when one is described, tagged and the last one deleted
    mlflow.update_model_version("mf-fraud", "2", description="the good one")
    mlflow.set_model_version_tag("mf-fraud", "2", "validated", "yes")
    mlflow.delete_model_version_tag("mf-fraud", "2", "n")
    mlflow.delete_model_version("mf-fraud", "3")
    # then version 2 shows it all, with its source, run and the registering principal
    two = mlflow.get_model_version("mf-fraud", "2")
    assert (two.source, two.run_id, two.user_id) == (
        "s3://bucket/runs/r2/artifacts/model",
        "r2",
        "trainer",
    )
    assert (two.description, two.tags) == ("the good one", {"validated": "yes"})
    # and the deleted version is gone for MLflow callers, its number never given again
    with pytest.raises(RestException) as gone:
        mlflow.get_model_version("mf-fraud", "3")
    assert error_code(gone) == "RESOURCE_DOES_NOT_EXIST"
    assert mlflow.create_model_version("mf-fraud", source="s3://bucket/r4").version == "4"
    listed = mlflow.search_model_versions("name = 'mf-fraud'")
    assert sorted(v.version for v in listed) == ["1", "2", "4"]
    assert mlflow.get_model_version_download_uri("mf-fraud", "2") == two.source


def test_aliases_point_move_and_show_in_searches_and_concurrent_moves_never_fail(
    mlflow: MlflowClient,
) -> None:
    # given a model with four versions
    mlflow.create_registered_model("mf-alias")
    for n in range(4):
        mlflow.create_model_version("mf-alias", source=f"s3://b/m{n}")
    # when aliases are set, moved and removed
    mlflow.set_registered_model_alias("mf-alias", "champion", "1")
    mlflow.set_registered_model_alias("mf-alias", "challenger", "2")
    mlflow.set_registered_model_alias("mf-alias", "champion", "3")
    mlflow.set_registered_model_alias("mf-alias", "old", "1")
    mlflow.delete_registered_model_alias("mf-alias", "old")
    mlflow.delete_registered_model_alias("mf-alias", "never-set")  # a no-op, as in MLflow
    # then reads, the model and version searches all show them (MLflow's searches do not)
    assert mlflow.get_model_version_by_alias("mf-alias", "champion").version == "3"
    assert mlflow.get_registered_model("mf-alias").aliases == {"champion": "3", "challenger": "2"}
    found = {v.version: v.aliases for v in mlflow.search_model_versions("name = 'mf-alias'")}
    assert found == {"4": [], "3": ["champion"], "2": ["challenger"], "1": []}
    (model,) = mlflow.search_registered_models("name = 'mf-alias'")
    assert model.aliases == {"champion": "3", "challenger": "2"}
    # and an unknown alias is INVALID_PARAMETER_VALUE, as MLflow answers it
    with pytest.raises(RestException) as unknown:
        mlflow.get_model_version_by_alias("mf-alias", "nobody")
    assert error_code(unknown) == "INVALID_PARAMETER_VALUE"
    # when 16 callers move one alias at once, none fails (MLflow raises unique violations)
    failures: list[BaseException] = []

    def move(n: int) -> None:
        try:
            mlflow.set_registered_model_alias("mf-alias", "hot", str(n % 4 + 1))
        except BaseException as exc:
            failures.append(exc)

    callers = [threading.Thread(target=move, args=(n,)) for n in range(16)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert failures == []
    assert mlflow.get_model_version_by_alias("mf-alias", "hot").version in {"1", "2", "3", "4"}


def test_reads_of_deleted_models_and_versions_and_the_latest_alias_answer_as_mlflow_does(
    mlflow: MlflowClient,
) -> None:
    # given a model with three versions, the alias champion on version 2
    mlflow.create_registered_model("mf-reads")
    for n in range(3):
        mlflow.create_model_version("mf-reads", source=f"s3://b/reads{n}")
    mlflow.set_registered_model_alias("mf-reads", "champion", "2")
    # then the reserved alias latest names the highest version
    assert mlflow.get_model_version_by_alias("mf-reads", "latest").version == "3"
    # when the highest version is deleted
    mlflow.delete_model_version("mf-reads", "3")
    # then latest names the highest one left, and the deleted one is gone to every read
    assert mlflow.get_model_version_by_alias("mf-reads", "latest").version == "2"
    reads: tuple[Callable[[], object], ...] = (
        lambda: mlflow.get_model_version("mf-reads", "3"),
        lambda: mlflow.get_model_version_download_uri("mf-reads", "3"),
    )
    for read in reads:
        with pytest.raises(RestException) as gone:
            read()
        assert error_code(gone) == "RESOURCE_DOES_NOT_EXIST"
        assert "Model Version (name=mf-reads, version=3) not found" in gone.value.message
    assert [v.version for v in mlflow.get_latest_versions("mf-reads")] == ["2"]
    # when the model itself is deleted
    mlflow.delete_registered_model("mf-reads")
    # then every read by its name says the registered model is not found, as MLflow does,
    # whether the version, alias or list asked for existed or not
    hidden_reads: tuple[Callable[[], object], ...] = (
        lambda: mlflow.get_registered_model("mf-reads"),
        lambda: mlflow.get_model_version("mf-reads", "1"),
        lambda: mlflow.get_model_version("mf-reads", "9"),
        lambda: mlflow.get_model_version_download_uri("mf-reads", "1"),
        lambda: mlflow.get_model_version_by_alias("mf-reads", "champion"),
        lambda: mlflow.get_model_version_by_alias("mf-reads", "nobody"),
        lambda: mlflow.get_model_version_by_alias("mf-reads", "latest"),
        lambda: mlflow.get_latest_versions("mf-reads"),
    )
    for read in hidden_reads:
        with pytest.raises(RestException) as hidden:
            read()
        assert error_code(hidden) == "RESOURCE_DOES_NOT_EXIST"
        assert "Registered Model with name=mf-reads not found" in hidden.value.message
    # and a name no model ever had answers the same
    with pytest.raises(RestException) as never:
        mlflow.get_model_version("mf-never", "1")
    assert "Registered Model with name=mf-never not found" in never.value.message


def test_stages_map_both_ways_and_archive_existing_versions_archives_the_others(
    mlflow: MlflowClient,
) -> None:
    # given four versions
    mlflow.create_registered_model("mf-stage")
    for n in range(4):
        mlflow.create_model_version("mf-stage", source=f"s3://b/s{n}")
    # when two go to Staging, then one of them with archive_existing_versions
    mlflow.transition_model_version_stage("mf-stage", "1", "Staging")
    mlflow.transition_model_version_stage("mf-stage", "2", "staging")  # case-insensitive
    moved = mlflow.transition_model_version_stage(
        "mf-stage", "3", "Staging", archive_existing_versions=True
    )
    # then only that one is in Staging; the others are Archived
    assert moved.current_stage == "Staging"
    stages = {v.version: v.current_stage for v in mlflow.search_model_versions("name='mf-stage'")}
    assert stages == {"1": "Archived", "2": "Archived", "3": "Staging", "4": "None"}
    # when it goes on to Production
    mlflow.transition_model_version_stage("mf-stage", "3", "Production")
    # then the latest version per stage says so, overall and per stage asked for
    latest = {v.current_stage: v.version for v in mlflow.get_latest_versions("mf-stage")}
    assert latest == {"None": "4", "Production": "3", "Archived": "2"}
    (production,) = mlflow.get_latest_versions("mf-stage", stages=["Production"])
    assert production.version == "3"
    # and an unknown stage, or archive_existing for a non-active stage, is refused (not 5xx)
    with pytest.raises(RestException) as bad:
        mlflow.transition_model_version_stage("mf-stage", "4", "Shipping")
    assert error_code(bad) == "INVALID_PARAMETER_VALUE"
    with pytest.raises(RestException) as archived:
        mlflow.transition_model_version_stage(
            "mf-stage", "4", "Archived", archive_existing_versions=True
        )
    assert error_code(archived) == "INVALID_PARAMETER_VALUE"


def test_a_create_answers_the_model_as_later_reads_show_it(mlflow: MlflowClient) -> None:
    # when a model is created with a description and tags (answered from what the create
    # recorded, not from the views)
    created = mlflow.create_registered_model(
        "mf-created", tags={"team": "risk", "tier": "gold"}, description="churn, v2"
    )
    # then the answer is what a read shows once the views have it, field by field
    shown = mlflow.get_registered_model("mf-created")
    assert dict(created) == dict(shown)
    assert created.description == "churn, v2"
    assert created.tags == {"team": "risk", "tier": "gold"}
    assert created.creation_timestamp == created.last_updated_timestamp


def test_a_transition_answers_the_version_as_later_reads_show_it(mlflow: MlflowClient) -> None:
    # given a version with a description, tags and two aliases set in reverse order
    mlflow.create_registered_model("mf-moved")
    mlflow.create_model_version("mf-moved", source="s3://b/moved", description="first cut")
    mlflow.set_model_version_tag("mf-moved", "1", "owner", "ml-team")
    mlflow.set_model_version_tag("mf-moved", "1", "data", "2026-q4")
    mlflow.set_registered_model_alias("mf-moved", "zeta", "1")
    mlflow.set_registered_model_alias("mf-moved", "alpha", "1")
    # when it moves to Staging (answered from what the move recorded, not from the views)
    moved = mlflow.transition_model_version_stage("mf-moved", "1", "Staging")
    # then the answer is what a read shows once the views have the move, field by field
    shown = mlflow.get_model_version("mf-moved", "1")
    assert moved.current_stage == shown.current_stage == "Staging"
    assert dict(moved) == dict(shown)
    assert moved.aliases == ["alpha", "zeta"]
    assert moved.tags == {"owner": "ml-team", "data": "2026-q4"}
    assert moved.last_updated_timestamp >= moved.creation_timestamp


def test_searches_filter_with_mlflow_grammar_order_and_page_with_opaque_tokens(
    server: RegistryServer, mlflow: MlflowClient
) -> None:
    # given five models, two tagged, and versions from two runs
    for n in range(5):
        mlflow.create_registered_model(f"mf-page-{n}", tags={"tier": "gold"} if n < 2 else {})
        mlflow.create_model_version(f"mf-page-{n}", source=f"s3://b/p{n}", run_id=f"run-{n % 2}")
    # (MLflow's client registers prompts through its prompt API only: so over the wire)
    prompt = httpx.post(
        f"{server.url}{MLFLOW}/registered-models/create",
        json={"name": "mf-prompt", "tags": [{"key": "mlflow.prompt.is_prompt", "value": "true"}]},
        headers=_bearer(server.admin_token),
    )
    assert prompt.status_code == 200, prompt.text

    # when models (or versions) are searched two at a time, by name or by time
    def paged(search: Callable[..., Any], order: str) -> list[str]:
        names: list[str] = []
        token: str | None = None
        while True:
            page = search(
                "name LIKE 'mf-page-%'", max_results=2, order_by=[order], page_token=token
            )
            names += [found.name for found in page]
            token = page.token
            if not token:
                return names

    # then every model comes once, in order, over three pages
    newest_first = [f"mf-page-{n}" for n in (4, 3, 2, 1, 0)]
    assert paged(mlflow.search_registered_models, "name DESC") == newest_first
    assert paged(mlflow.search_registered_models, "creation_timestamp DESC") == newest_first
    # and versions page by time too: each token holds its last row's exact instant
    assert paged(mlflow.search_model_versions, "creation_timestamp DESC") == newest_first
    assert paged(mlflow.search_model_versions, "last_updated_timestamp ASC") == newest_first[::-1]
    # and the grammar MLflow clients send works: backticked tags, ILIKE, IN, numbers
    gold = mlflow.search_registered_models("tags.`tier` = 'gold' AND name ILIKE 'MF-PAGE-%'")
    assert sorted(m.name for m in gold) == ["mf-page-0", "mf-page-1"]
    assert all(m.latest_versions[0].version == "1" for m in gold)
    runs = mlflow.search_model_versions("run_id IN ('run-1') AND version_number >= 1")
    assert sorted(v.name for v in runs) == ["mf-page-1", "mf-page-3"]
    (first,) = mlflow.search_model_versions("source_path LIKE 's3://b/p0%'")
    since = f"name = 'mf-page-0' AND creation_timestamp >= {first.creation_timestamp}"
    assert [v.version for v in mlflow.search_model_versions(since)] == ["1"]
    assert mlflow.search_model_versions(since.replace(">=", ">")) == []
    # and prompts are hidden unless the filter asks for them
    assert mlflow.search_registered_models("name = 'mf-prompt'") == []
    asked = mlflow.search_registered_models("tags.`mlflow.prompt.is_prompt` = 'true'")
    assert [m.name for m in asked] == ["mf-prompt"]
    # and a malformed filter or a forged token is INVALID_PARAMETER_VALUE, not a 5xx
    for bad in (
        lambda: mlflow.search_registered_models("name = 'a' OR name = 'b'"),
        lambda: mlflow.search_model_versions("size > 3"),
        lambda: mlflow.search_registered_models(page_token="forged"),
    ):
        with pytest.raises(RestException) as refused:
            bad()
        assert error_code(refused) == "INVALID_PARAMETER_VALUE"


def test_a_version_whose_files_modelreg_stores_downloads_through_the_artifact_uri(
    server: RegistryServer, mlflow: MlflowClient
) -> None:
    # given a version registered through modelreg's own API with a stored file
    body = b"weights"
    digest = hashlib.sha256(body).hexdigest()
    headers = _bearer(server.admin_token)
    assert (
        httpx.post(
            f"{server.url}/api/v1/models", json={"name": "mf-stored"}, headers=headers
        ).status_code
        == 201
    )
    upload = httpx.put(
        f"{server.url}/api/v1/models/mf-stored/blobs/sha256:{digest}", content=body, headers=headers
    )
    assert upload.status_code == 201, upload.text
    registered = httpx.post(
        f"{server.url}/api/v1/models/mf-stored/versions",
        json={"artifacts": [{"path": "model.bin", "sha256": digest, "size": len(body)}]},
        headers=headers,
    )
    assert registered.status_code == 201, registered.text
    # when MLflow asks where its files are
    uri = mlflow.get_model_version_download_uri("mf-stored", "1")
    # then it is modelreg's MLflow artifact URI for that version
    assert uri == "mlflow-artifacts:/modelreg/models/mf-stored/versions/1"


def test_a_transition_that_needs_approval_answers_an_mlflow_error_and_opens_a_request(
    server: RegistryServer, mlflow: MlflowClient
) -> None:
    # given a model whose own policy wants one approval for production
    mlflow.create_registered_model("mf-governed")
    mlflow.create_model_version("mf-governed", source="s3://b/g1")
    policy = {
        "transitions": [
            {"from_stage": "development", "to_stage": "production", "approvals": 1},
        ],
        "protected_aliases": [{"alias": "champion", "approvals": 1}],
    }
    response = httpx.put(
        f"{server.url}/api/v1/models/mf-governed/policy",
        json={"policy": policy, "comment": "production needs a second pair of eyes"},
        headers=_bearer(server.admin_token),
    )
    assert response.status_code == 200, response.text
    # when MLflow moves the version to Production directly
    with pytest.raises(RestException) as refused:
        mlflow.transition_model_version_stage("mf-governed", "1", "Production")
    # then the answer says why, and a promotion request waits for an approver
    assert error_code(refused) == "PERMISSION_DENIED"
    assert "needs approval" in refused.value.message
    pending = httpx.get(
        f"{server.url}/api/v1/models/mf-governed/promotions", headers=_bearer(server.admin_token)
    ).json()
    assert [(r["version"], r["target_stage"], r["status"]) for r in pending] == [
        (1, "production", "pending")
    ]
    assert pending[0]["request_id"] in refused.value.message
    assert mlflow.get_model_version("mf-governed", "1").current_stage == "None"
    # and a protected alias moves only through an approved request, not through MLflow
    with pytest.raises(RestException) as protected:
        mlflow.set_registered_model_alias("mf-governed", "champion", "1")
    assert error_code(protected) == "PERMISSION_DENIED"
    assert mlflow.get_registered_model("mf-governed").aliases == {}


def test_a_create_retried_after_a_lost_answer_records_one_version(
    server: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FlakyProxy(server.url) as proxy:
        # given MLflow's client behind a proxy that loses the first answer to a create
        mlflow = client_as(server, token(server, "retrier", "contributor"), monkeypatch, proxy.url)
        mlflow.create_registered_model("mf-retry")
        mlflow.create_model_version("mf-retry", source="s3://b/first")
        proxy.drop_responses(1, match=f"POST {MLFLOW}/model-versions/create ".encode())
        # when it registers a version (the server does it; the client retries, unkeyed)
        version = mlflow.create_model_version("mf-retry", source="s3://b/second", run_id="r9")
        # then it gets the version the first attempt created, and there is no third one
        assert len(proxy.dropped) == 1
        assert len(proxy.seen(f"POST {MLFLOW}/model-versions/create ")) == 3
        assert version.version == "2"
        listed = mlflow.search_model_versions("name = 'mf-retry'")
        assert sorted(v.version for v in listed) == ["1", "2"]


def test_basic_auth_maps_to_a_token_and_scopes_and_roles_apply(
    server: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a contributor scoped to team-a models, signing in with MLflow's basic auth
    secret = token(server, "team-a-ci", "contributor", scopes=("mf-team-a*",))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "team-a-ci")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    scoped = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    admin_only = "mf-team-b"
    answer = httpx.post(
        f"{server.url}{MLFLOW}/registered-models/create",
        json={"name": admin_only},
        headers=_bearer(server.admin_token),
    )
    assert answer.status_code == 200, answer.text
    # when it works on its own model, it may; the user is the token's principal
    scoped.create_registered_model("mf-team-a-1")
    assert scoped.create_model_version("mf-team-a-1", source="s3://b/a").user_id == "team-a-ci"
    # then a model outside its scope is PERMISSION_DENIED, and searches never show it
    with pytest.raises(RestException) as denied:
        scoped.get_registered_model(admin_only)
    assert error_code(denied) == "PERMISSION_DENIED"
    assert [m.name for m in scoped.search_registered_models("name LIKE 'mf-team-%'")] == [
        "mf-team-a-1"
    ]
    # and a contributor may not delete a model (an admin's act, as on /api/v1)
    with pytest.raises(RestException) as not_admin:
        scoped.delete_registered_model("mf-team-a-1")
    assert error_code(not_admin) == "PERMISSION_DENIED"
    # and a wrong password is UNAUTHENTICATED
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "mr_wrong")
    with pytest.raises(RestException) as wrong:
        scoped.get_registered_model("mf-team-a-1")
    assert error_code(wrong) == "UNAUTHENTICATED"


def test_raw_wire_shapes_delete_with_a_body_answers_200_and_every_change_is_an_event(
    server: RegistryServer,
) -> None:
    # given a model and a version created over the raw REST API
    headers = _bearer(server.admin_token)
    post = httpx.post(
        f"{server.url}{MLFLOW}/registered-models/create", json={"name": "mf-raw"}, headers=headers
    )
    assert post.status_code == 200, post.text
    created = httpx.post(
        f"{server.url}{MLFLOW}/model-versions/create",
        json={"name": "mf-raw", "source": "gs://b/raw"},
        headers=headers,
    ).json()["model_version"]
    # then versions are strings and timestamps int64 milliseconds
    assert created["version"] == "1"
    assert isinstance(created["creation_timestamp"], int)
    # when a version tag is deleted with DELETE and a JSON body
    httpx.post(
        f"{server.url}{MLFLOW}/model-versions/set-tag",
        json={"name": "mf-raw", "version": "1", "key": "k", "value": "v"},
        headers=headers,
    )
    deleted = httpx.request(
        "DELETE",
        f"{server.url}{MLFLOW}/model-versions/delete-tag",
        json={"name": "mf-raw", "version": "1", "key": "k"},
        headers=headers,
    )
    # then it answers 200 {} (MLflow's client refuses a 204)
    assert (deleted.status_code, deleted.json()) == (200, {})
    # and every change is an event on modelreg's log, by the caller
    history = httpx.get(f"{server.url}/api/v1/models/mf-raw/history", headers=headers).json()
    kinds = [e["event_type"] for e in reversed(history["items"])]  # newest first
    assert kinds == [
        "model.registered",
        "model.version_registered",
        "model.version_tags_set",
        "model.version_tags_removed",
    ]
    # and an unknown GET parameter value is MLflow's INVALID_PARAMETER_VALUE envelope
    bad = httpx.get(
        f"{server.url}{MLFLOW}/model-versions/get",
        params={"name": "mf-raw", "version": "x"},
        headers=headers,
    )
    assert bad.status_code == 400
    assert bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    missing = httpx.get(f"{server.url}{MLFLOW}/registered-models/get", headers=headers)
    assert (missing.status_code, missing.json()["error_code"]) == (400, "INVALID_PARAMETER_VALUE")


def test_paths_modelreg_does_not_serve_answer_mlflows_endpoint_not_found(
    server: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = _bearer(server.admin_token)
    # when a caller asks for an RPC that does not exist, or one with the wrong method
    unknown = httpx.post(
        f"{server.url}{MLFLOW}/registered-models/explode", json={}, headers=headers
    )
    wrong_method = httpx.delete(f"{server.url}{MLFLOW}/registered-models/search", headers=headers)
    # then each is MLflow's ENDPOINT_NOT_FOUND envelope, not modelreg's problem+json
    assert unknown.status_code == 404, unknown.text
    assert unknown.headers["content-type"].startswith("application/json")
    assert unknown.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    assert wrong_method.status_code == 405, wrong_method.text
    assert wrong_method.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    # and an anonymous caller learns no more than MLflow's published API says: no such RPC,
    # while an RPC that exists asks it for credentials
    anonymous = httpx.post(f"{server.url}{MLFLOW}/registered-models/explode", json={})
    assert (anonymous.status_code, anonymous.json()["error_code"]) == (404, "ENDPOINT_NOT_FOUND")
    served = httpx.post(f"{server.url}{MLFLOW}/registered-models/create", json={"name": "x"})
    assert (served.status_code, served.json()["error_code"]) == (401, "UNAUTHENTICATED")
    # and outside MLflow's paths modelreg's own problem+json is unchanged
    ours = httpx.get(f"{server.url}/api/v1/nowhere", headers=headers)
    assert ours.status_code == 404
    assert ours.headers["content-type"].startswith("application/problem+json")
    # and MLflow's own client, asked for the tracking API modelreg does not host, reads the code
    client = client_as(server, server.admin_token, monkeypatch)
    with pytest.raises(RestException) as failed:
        client.search_experiments()
    assert error_code(failed) == "ENDPOINT_NOT_FOUND"


def test_concurrent_creates_get_consecutive_numbers_and_the_fluent_api_works(
    server: RegistryServer, mlflow: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a model, and 12 MLflow callers registering versions of it at once
    mlflow.create_registered_model("mf-burst")
    numbers: list[str] = []
    failures: list[BaseException] = []

    def register(n: int) -> None:
        try:
            numbers.append(
                mlflow.create_model_version("mf-burst", source=f"s3://b/burst{n}").version
            )
        except BaseException as exc:
            failures.append(exc)

    callers = [threading.Thread(target=register, args=(n,)) for n in range(12)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    # then none failed and the numbers are 1..12: no gap, no duplicate
    assert failures == []
    assert sorted(numbers, key=int) == [str(n) for n in range(1, 13)]
    # and MLflow's fluent API registers (creating the model on first use) and searches
    import mlflow as fluent  # the module, beside the client fixture of that name

    for variable, value in (
        ("MLFLOW_TRACKING_TOKEN", server.admin_token),
        ("MLFLOW_TRACKING_URI", server.url),  # as a job configures it; reset after the test
        ("MLFLOW_REGISTRY_URI", server.url),
    ):
        monkeypatch.setenv(variable, value)
    first = fluent.register_model("s3://b/fluent/model", "mf-fluent")
    again = fluent.register_model("s3://b/fluent/model-2", "mf-fluent")  # the model exists: fine
    assert (first.version, again.version) == ("1", "2")
    found = fluent.search_model_versions(filter_string="name = 'mf-fluent'")
    assert sorted(str(v.source) for v in found) == ["s3://b/fluent/model", "s3://b/fluent/model-2"]


async def _published(nats_url: str, stream: str, subject: str) -> list[str]:
    """The ``ce-type`` of every message on ``stream`` about ``subject`` (a model's stream)."""
    nc = await connect(nats_url)
    try:
        jsm = nc.jsm(timeout=5)
        last = (await jsm.stream_info(stream)).state.last_seq
        types = []
        for seq in range(1, last + 1):
            headers = (await jsm.get_msg(stream, seq=seq)).headers or {}
            if headers.get("ce-subject") == subject:
                types.append(headers["ce-type"])
        return types
    finally:
        await nc.close()


async def test_every_change_made_through_mlflow_is_published_on_nats(
    server: RegistryServer, nats_url: str
) -> None:
    # given a model changed only through MLflow's API
    headers = _bearer(server.admin_token)
    async with httpx.AsyncClient(base_url=f"{server.url}{MLFLOW}", headers=headers) as mlflow:
        assert (await mlflow.post("/registered-models/create", json={"name": "mf-nats"})).is_success
        created = await mlflow.post(
            "/model-versions/create", json={"name": "mf-nats", "source": "s3://n"}
        )
        assert created.is_success
        moved = await mlflow.post(
            "/registered-models/alias", json={"name": "mf-nats", "alias": "live", "version": "1"}
        )
        assert moved.is_success
        model = await mlflow.get(f"{server.url}/api/v1/models/mf-nats")
    stream = f"model:{model.json()['model_id']}"
    wanted = ["model.registered", "model.version_registered", "model.alias_set"]

    # then each change reaches JetStream, in order, as it reaches the log
    async def all_published() -> bool:
        return await _published(nats_url, server.stream, stream) == wanted

    await eventually(all_published, what="the MLflow changes on NATS")
