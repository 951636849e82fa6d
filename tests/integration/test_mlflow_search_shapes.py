"""MLflow's version search and its single-version read answer the same JSON for every
version, whatever its tags, aliases, stage, description, source and run: the two are
different queries over the views, and a client that searches then reads (or caches
either) must never see a version change shape between them. Paging loses no version and
shows no deleted one."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.policies import permissive

M = "/api/v1/models"
MLFLOW = "/api/2.0/mlflow"

# Keys and names that Python and a linguistic collation order differently (case,
# punctuation); JSON's own specials, accents and a non-BMP character in values.
TAGS: list[dict[str, str]] = [
    {},
    {"b": "2", "B": "1", "a_b": "x", "a-b": "y", "a.b": "accent é", "a:b": "", "Z/z": "z"},
    {"quote": 'say "hi"', "slash": "a\\b/c", "lines": "one\ntwo\tthree", "emoji": "🚀"},
    {"mlflow.note": "kept", "Zeta": "Ω", "alpha": "ascii"},
]
ALIASES: list[list[str]] = [[], ["zeta", "alpha", "beta-1", "beta_1", "beta1"], ["champion"]]
DESCRIPTIONS = ["", 'a "quoted" description\nover two lines', "ünïcödé ✓"]


async def mlflow_post(api: Api, rpc: str, body: dict[str, Any]) -> Any:
    answer = await api.post(f"{MLFLOW}/{rpc}", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def stored_version(api: Api, name: str) -> int:
    """A version whose one file modelreg stores (its source is modelreg's artifact URI)."""
    body = b"weights"
    digest = hashlib.sha256(body).hexdigest()
    stored = await api.put(f"{M}/{name}/blobs/sha256:{digest}", content=body)
    assert stored.status_code in (200, 201), stored.text
    manifest = [{"path": "model.bin", "sha256": digest, "size": len(body)}]
    created = await api.post(f"{M}/{name}/versions", json={"artifacts": manifest})
    assert created.status_code == 201, created.text
    number: int = created.json()["version"]
    return number


def assert_run_as_sent(version: dict[str, Any]) -> None:
    """Version ``n`` was created with run ``run-n`` (odd ``n``), its link and its source."""
    if not version.get("run_id"):
        assert "run_link" not in version
        return
    n = version["run_id"].removeprefix("run-")
    assert version["run_link"] == f"https://ci.example/runs/{n}?a=1&b=2"
    assert version["source"] == f"s3://bucket/{version['name']}/{n}/model"


async def test_every_searched_version_reads_exactly_as_its_single_read(db: Database) -> None:
    async with running_api(db) as api:
        # given versions of two models covering every shape a version's JSON takes
        await api.services.registry.set_registry_policy(
            permissive(), actor="admin", comment="no approvals"
        )
        expected = 0
        for name in ("docs-a", "docs-b"):
            await mlflow_post(api, "registered-models/create", {"name": name})
            for n in range(len(TAGS) * 2):
                tags = [{"key": k, "value": v} for k, v in TAGS[n % len(TAGS)].items()]
                request: dict[str, Any] = {
                    "name": name,
                    "source": f"s3://bucket/{name}/{n}/model",
                    "tags": tags,
                    "description": DESCRIPTIONS[n % len(DESCRIPTIONS)],
                }
                if n % 2:
                    request["run_id"] = f"run-{n}"
                    request["run_link"] = f"https://ci.example/runs/{n}?a=1&b=2"
                created = await mlflow_post(api, "model-versions/create", request)
                version = created["model_version"]["version"]
                expected += 1
                for alias in ALIASES[n % len(ALIASES)]:
                    if n % len(ALIASES) == 2:
                        alias = f"{alias}-{n}"  # an alias names one version at a time
                    await mlflow_post(
                        api,
                        "registered-models/alias",
                        {"name": name, "alias": alias, "version": version},
                    )
            await stored_version(api, name)
            expected += 1
            moves = (("1", "Staging"), ("2", "Staging"), ("2", "Production"), ("3", "Archived"))
            for version, stage in moves:
                await mlflow_post(
                    api,
                    "model-versions/transition-stage",
                    {"name": name, "version": version, "stage": stage},
                )
        # and one deleted version, which neither read shows
        deleted = await api.request(
            "DELETE",
            f"{MLFLOW}/model-versions/delete",
            json={"name": "docs-a", "version": "4"},
        )
        assert deleted.status_code == 200, deleted.text
        expected -= 1

        # when every version is searched, three to a page, and each is read alone
        searched: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"filter": "name LIKE 'docs-%'", "max_results": 3}
            if token:
                params["page_token"] = token
            page = await api.get(f"{MLFLOW}/model-versions/search", params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            searched += body.get("model_versions", [])
            token = body.get("next_page_token")
            if not token:
                break

        # then every live version came once, and its JSON equals the single read's
        assert len(searched) == expected
        assert len({(v["name"], v["version"]) for v in searched}) == expected
        for found in searched:
            alone = await api.get(
                f"{MLFLOW}/model-versions/get",
                params={"name": found["name"], "version": found["version"]},
            )
            assert alone.status_code == 200, alone.text
            assert found == alone.json()["model_version"]
        # and the shapes the versions take were all there to compare
        assert any(v.get("aliases") for v in searched)
        assert any("aliases" not in v for v in searched)
        assert any("tags" not in v for v in searched)
        assert {v["current_stage"] for v in searched} >= {"None", "Staging", "Production"}
        assert any(v["source"].startswith("mlflow-artifacts:/") for v in searched)
        assert any("run_link" in v for v in searched)
        # and each run's id and link, and each external source, are the ones sent
        for v in searched:
            assert_run_as_sent(v)
        assert any("description" not in v for v in searched)


async def test_an_empty_search_answers_an_empty_object(db: Database) -> None:
    async with running_api(db) as api:
        # given no model, when versions are searched, then the answer is {} as in MLflow
        page = await api.get(f"{MLFLOW}/model-versions/search", params={"filter": "name='x'"})
        assert page.status_code == 200, page.text
        assert page.json() == {}


async def test_latest_versions_are_each_stages_highest_live_one_for_every_model_at_once(
    db: Database,
) -> None:
    async with running_api(db) as api:
        await api.services.registry.set_registry_policy(
            permissive(), actor="admin", comment="no approvals"
        )

        async def versions(name: str, count: int) -> None:
            await mlflow_post(api, "registered-models/create", {"name": name})
            for n in range(count):
                body = {"name": name, "source": f"s3://bucket/{name}/{n}"}
                await mlflow_post(api, "model-versions/create", body)

        async def move(name: str, version: int, stage: str) -> None:
            body = {"name": name, "version": str(version), "stage": stage}
            await mlflow_post(api, "model-versions/transition-stage", body)

        async def delete(name: str, version: int) -> None:
            answer = await api.delete(
                f"{MLFLOW}/model-versions/delete", json={"name": name, "version": str(version)}
            )
            assert answer.status_code == 200, answer.text

        # given lv-a: 1 in Production; 2 and 3 in Staging, then 3 deleted; 4 in None;
        # 5 in Archived and 6 deleted (so archived too, but hidden)
        await versions("lv-a", 6)
        await move("lv-a", 1, "Staging")
        await move("lv-a", 1, "Production")
        for number in (2, 3):
            await move("lv-a", number, "Staging")
        await delete("lv-a", 3)
        await move("lv-a", 5, "Archived")
        await delete("lv-a", 6)
        # and lv-b with two versions in None, lv-c with none, lv-d with only a deleted one
        await versions("lv-b", 2)
        await versions("lv-c", 0)
        await versions("lv-d", 1)
        await delete("lv-d", 1)

        # when the models are searched together (one read of the latest for all of them)
        searched = await api.get(
            f"{MLFLOW}/registered-models/search",
            params={"filter": "name LIKE 'lv-%'", "max_results": 10},
        )
        assert searched.status_code == 200, searched.text
        found = searched.json()

        # then each model shows each stage's highest version that is not deleted
        latest = {
            m["name"]: {v["current_stage"]: v["version"] for v in m.get("latest_versions", [])}
            for m in found["registered_models"]
        }
        assert latest == {
            "lv-a": {"Production": "1", "Staging": "2", "None": "4", "Archived": "5"},
            "lv-b": {"None": "2"},
            "lv-c": {},
            "lv-d": {},
        }
        # and one model's read and get-latest-versions say the same
        one = await api.get(f"{MLFLOW}/registered-models/get", params={"name": "lv-a"})
        assert {
            v["current_stage"]: v["version"]
            for v in one.json()["registered_model"]["latest_versions"]
        } == latest["lv-a"]
        asked = await mlflow_post(
            api, "registered-models/get-latest-versions", {"name": "lv-a", "stages": ["Staging"]}
        )
        assert [(v["current_stage"], v["version"]) for v in asked["model_versions"]] == [
            ("Staging", "2")
        ]
