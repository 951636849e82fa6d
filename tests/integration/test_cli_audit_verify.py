"""``modelreg audit verify`` and ``modelreg audit replay --as-of`` against a real Postgres schema:
exit codes, the break they name, and the registry as it stood at several positions."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from events.model.commands import (
    RenameModel,
    ReportDeploymentSucceeded,
    RequestPromotion,
    SetAlias,
    StartDeployment,
    TransitionStage,
)
from events.stages import Stage
from service.cli.audit import app
from tests.support.database import Database
from tests.support.registry_history import Registry, gated_policy


async def audit(db: Database, *args: str) -> Result:
    """The command pointed at the test schema, in a thread: it runs its own event loop."""
    env = {
        "MODELREG_DATABASE_URL": db.url,
        "MODELREG_DB_SCHEMA": db.schema,
        "MODELREG_DB_APP_ROLE": db.app_role,
    }
    return await asyncio.to_thread(lambda: CliRunner().invoke(app, list(args), env=env))


def document(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    found: dict[str, Any] = json.loads(result.stdout)
    return found


@dataclass
class History:
    registered: int  # churn v1, v2 and fraud v1 registered; nothing in production
    first: int  # churn v1 in production, alias champion on it, deployed to prod/k8s
    second: int  # churn v2 in production (v1 archived); the deployment still runs v1
    requested: int  # a promotion of fraud v1 waits for an approval
    renamed: int  # churn is called churn-renamed


@pytest.fixture
async def history(db: Database) -> History:
    reg = Registry(db)
    await reg.register_model("churn", owner="team-risk", model_id="m1")
    v1 = await reg.register_version("m1")
    v2 = await reg.register_version("m1")
    await reg.register_model("fraud", owner="team-risk", model_id="m2")
    await reg.register_version("m2")
    registered = await reg.seal()

    await reg.to_production("m1", v1)
    await reg.execute("m1", SetAlias, alias="champion", version=v1)
    await reg.execute(
        "m1",
        StartDeployment,
        deployment_id="d1",
        version=v1,
        environment="prod",
        target="k8s",
        desired_stage=Stage.PRODUCTION,
    )
    await reg.execute("m1", ReportDeploymentSucceeded, deployment_id="d1")
    first = await reg.seal()

    await reg.to_production("m1", v2)
    second = await reg.seal()

    await reg.set_registry_policy(gated_policy(1))
    await reg.execute("m2", TransitionStage, version=1, to_stage=Stage.STAGING)
    await reg.execute(
        "m2",
        RequestPromotion,
        request_id="r1",
        version=1,
        justification="beats v0",
        target_stage=Stage.PRODUCTION,
    )
    requested = await reg.seal()

    await reg.execute("m1", RenameModel, new_name="churn-renamed")
    renamed = await reg.seal()
    return History(registered, first, second, requested, renamed)


# ---------------------------------------------------------------- verify


async def test_verify_a_clean_store_exits_0(db: Database, history: History) -> None:
    report = document(await audit(db, "verify", "--json"))
    assert report["ok"] is True and report["first_break"] is None
    assert report["head_position"] == history.renamed == report["log_entries_checked"]

    table = await audit(db, "verify")
    assert table.exit_code == 0, table.output
    rows = {
        " ".join(line.split()[:-1]): line.split()[-1]
        for line in table.stdout.splitlines()
        if line.strip()
    }
    assert (rows["result"], rows["head position"], rows["events checked"]) == (
        "ok",
        str(history.renamed),
        "18",
    )


async def test_verify_a_tampered_store_exits_1_naming_the_position(
    db: Database, history: History
) -> None:
    # given one changed byte in churn's third event, as a DBA with full access could do it
    position = await db.pool.fetchval(
        "SELECT l.log_position FROM event_log l JOIN events e USING (seq)"
        " WHERE e.stream_id = 'model:m1' AND e.stream_position = 3"
    )
    admin = await db.admin()
    async with admin.transaction():
        await admin.execute("SET LOCAL session_replication_role = replica")
        await admin.execute(
            "UPDATE events SET envelope = overlay(envelope PLACING '\\x5a'::bytea FROM length(envelope) - 3 FOR 1)"
            " WHERE stream_id = 'model:m1' AND stream_position = 3"
        )

    result = await audit(db, "verify")
    assert result.exit_code == 1, result.output
    assert f"the chain is broken at log position {position} (changed_bytes)" in result.stderr
    assert (
        "BROKEN" in result.stdout and f"changed_bytes at log position {position}" in result.stdout
    )

    as_json = await audit(db, "verify", "--json")
    assert as_json.exit_code == 1
    first = json.loads(as_json.stdout)["first_break"]
    assert (first["kind"], first["log_position"], first["stream_id"], first["stream_position"]) == (
        "changed_bytes",
        position,
        "model:m1",
        3,
    )


# ---------------------------------------------------------------- replay


def churn(snapshot: dict[str, Any], name: str = "churn") -> dict[str, Any]:
    found: list[dict[str, Any]] = [m for m in snapshot["models"] if m["name"] == name]
    assert len(found) == 1
    return found[0]


async def test_replay_shows_the_production_version_at_each_position(
    db: Database, history: History
) -> None:
    before = document(await audit(db, "replay", "--as-of", str(history.registered), "--json"))
    assert before["position"] == history.registered
    assert churn(before)["stages"]["production"] == [] and churn(before)["stages"][
        "development"
    ] == [1, 2]
    assert before["deployments"] == [] and before["open_requests"] == []

    first = document(await audit(db, "replay", "--as-of", str(history.first), "--json"))
    assert (churn(first)["stages"]["production"], churn(first)["aliases"]) == ([1], {"champion": 1})
    (deployed,) = first["deployments"]
    assert (
        deployed["model"],
        deployed["live_version"],
        deployed["desired_version"],
        deployed["drift"],
    ) == ("churn", 1, 1, False)

    second = document(await audit(db, "replay", "--as-of", str(history.second), "--json"))
    assert churn(second)["stages"]["production"] == [2] and churn(second)["stages"]["archived"] == [
        1
    ]
    assert churn(second)["aliases"] == {}
    (drifted,) = second["deployments"]
    assert (drifted["live_version"], drifted["desired_version"], drifted["drift"]) == (1, 2, True)

    requested = document(await audit(db, "replay", "--as-of", str(history.requested), "--json"))
    (request,) = requested["open_requests"]
    assert (
        request["model"],
        request["request_id"],
        request["version"],
        request["target_stage"],
    ) == ("fraud", "r1", 1, "production")

    # a time means the log as it stood then: the last position sealed at or before it
    sealed_at = await db.pool.fetchval(
        "SELECT sealed_at FROM event_log WHERE log_position = $1", history.first
    )
    by_time = document(
        await audit(db, "replay", "--as-of", sealed_at.isoformat().replace("+00:00", "Z"), "--json")
    )
    assert by_time["position"] == history.first and churn(by_time)["stages"]["production"] == [1]

    # for people: the same, as tables
    table = await audit(db, "replay", "--as-of", str(history.second))
    assert table.exit_code == 0, table.output
    assert f"Registry as of log position {history.second}" in table.stdout
    row = next(line for line in table.stdout.splitlines() if line.startswith("churn "))
    assert row.split()[:3] == ["churn", "v2", "-"]  # production v2, nothing in staging
    assert "version_mismatch" in table.stdout


async def test_replay_of_one_model_finds_it_by_the_name_it_had_then(
    db: Database, history: History
) -> None:
    then = document(
        await audit(db, "replay", "--as-of", str(history.first), "--model", "churn", "--json")
    )
    assert (then["model"]["name"], then["stages"]["production"]) == ("churn", [1])
    assert [v["version"] for v in then["versions"]] == [1, 2]
    assert [(r["deployment_id"], r["status"]) for r in then["runs"]] == [("d1", "succeeded")]

    now = document(
        await audit(
            db, "replay", "--as-of", str(history.renamed), "--model", "churn-renamed", "--json"
        )
    )
    assert (now["model"]["name"], now["stages"]["production"]) == ("churn-renamed", [2])

    table = await audit(db, "replay", "--as-of", str(history.first), "--model", "churn")
    assert table.exit_code == 0, table.output
    assert f"churn (m1) as of log position {history.first}" in table.stdout

    missing = await audit(db, "replay", "--as-of", str(history.first), "--model", "churn-renamed")
    assert missing.exit_code == 1
    assert f"no model was named 'churn-renamed' at log position {history.first}" in missing.stderr
    bad = await audit(db, "replay", "--as-of", "yesterday")
    assert bad.exit_code == 2 and "neither a log position nor an RFC 3339 time" in bad.stderr
