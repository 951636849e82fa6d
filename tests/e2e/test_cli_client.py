"""The client-side ``modelreg`` commands end to end against a ``modelreg serve`` process:
their tables, their ``--json`` documents and their exit codes. In process through typer's
runner (the command line ``service.cli.main.build`` assembles), plus the installed command
itself for the wiring, exit codes and shell completion."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.client import Client
from service.client.models import ArtifactEntry
from tests.support.cli import APP, as_json, run
from tests.support.registry_server import RegistryServer, registry_server


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


def test_models_as_a_table_and_as_json(server: RegistryServer) -> None:
    created = run(server, "models", "create", "cli-churn", "-d", "Churn risk", "--tag", "team=risk")
    assert "created model cli-churn: model.registered (log position" in created.stdout
    refused = run(server, "models", "create", "cli-churn", code=1)
    assert "409 Already exists" in refused.stderr and refused.stdout == ""

    table = run(server, "models", "list", "-q", "cli-*").stdout
    header, _, row = table.splitlines()[:3]
    assert header.split() == ["name", "latest", "stages", "aliases", "owner", "updated", "(UTC)"]
    assert row.split()[:2] == ["cli-churn", "admin"]
    listed = as_json(run(server, "models", "list", "-q", "cli-*", "--json"))
    assert isinstance(listed, dict)
    assert [m["name"] for m in listed["items"]] == ["cli-churn"] and listed["next_cursor"] is None

    shown = run(server, "models", "show", "cli-churn").stdout
    assert "team=risk" in shown and "Churn risk" in shown
    model = as_json(run(server, "models", "show", "cli-churn", "--json"))
    assert isinstance(model, dict)
    assert (model["name"], model["tags"], model["archived"]) == (
        "cli-churn",
        {"team": "risk"},
        False,
    )

    run(server, "models", "rename", "cli-churn", "cli-churn-monthly")
    gone = run(server, "models", "show", "cli-churn", code=1)
    assert "404 Not found: no model is named 'cli-churn'" in gone.stderr
    run(server, "models", "archive", "cli-churn-monthly", "-m", "replaced")
    assert "cli-churn-monthly" not in run(server, "models", "list", "-q", "cli-*").stdout
    assert "cli-churn-monthly" in run(server, "models", "list", "-q", "cli-*", "--archived").stdout


def test_versions_and_metrics_from_files(server: RegistryServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pkl").write_bytes(b"w" * 5000)
    (out / "meta.json").write_text("{}")

    registered = run(
        server,
        "versions",
        "register",
        "cli-fraud",
        str(out),
        "-p",
        "lr=0.1",
        "-p",
        "depth=6",
        "-p",
        "booster=gbtree",
        "--metric",
        "auc=0.93",
        "--dataset",
        "holdout",
        "--tag",
        "team=risk",
        "--no-code",
    )
    assert "registered cli-fraud v1 (created model cli-fraud)" in registered.stdout
    second = as_json(
        run(
            server,
            "versions",
            "register",
            "cli-fraud",
            str(out),
            "-p",
            "lr=0.2",
            "--no-code",
            "--uri",
            "s3://models/fraud/2",
            "--json",
        )
    )
    assert isinstance(second, dict)
    assert (second["version"], second["model_created"], second["receipt"]["events"]) == (
        2,
        False,
        ["model.version_registered"],
    )

    listed = run(server, "versions", "list", "cli-fraud").stdout
    assert [line.split()[0] for line in listed.splitlines()[2:]] == ["v2", "v1"]
    assert "auc[holdout]=0.93" in listed
    shown = run(server, "versions", "show", "cli-fraud", "1").stdout
    for expected in ("artifacts", "model.pkl", "5,000", "booster", "gbtree", "auc", "holdout"):
        assert expected in shown
    version = as_json(run(server, "versions", "show", "cli-fraud", "2", "--json"))
    assert isinstance(version, dict)
    artifacts = {a["path"]: a for a in version["content"]["artifacts"]}
    assert artifacts["model.pkl"]["sha256"] == hashlib.sha256(b"w" * 5000).hexdigest()
    assert artifacts["model.pkl"]["uri"] == "s3://models/fraud/2/model.pkl"
    assert version["content"]["parameters"] == {"lr": 0.2}

    # 2,500 points from a file: three requests
    points = tmp_path / "train.jsonl"
    points.write_text(
        "".join(
            json.dumps({"key": "loss", "value": 1 / (s + 1), "step": s}) + "\n" for s in range(2500)
        )
    )
    logged = run(server, "metrics", "log", "cli-fraud", "1", "--file", str(points))
    assert "logged 2500 points to cli-fraud v1 in 3 requests" in logged.stdout
    run(server, "metrics", "log", "cli-fraud", "2", "auc=0.95", "--dataset", "holdout")
    latest = run(server, "metrics", "show", "cli-fraud", "1").stdout
    loss = next(line for line in latest.splitlines() if line.startswith("loss"))
    assert loss.split()[1:4] == ["0.0004", "2499", "2500"]
    history = as_json(
        run(server, "metrics", "show", "cli-fraud", "1", "--key", "loss", "-n", "3000", "--json")
    )
    assert isinstance(history, list) and [p["step"] for p in history] == list(range(2500))

    compared = run(server, "metrics", "compare", "cli-fraud", "1", "2", "--diff").stdout
    rows = {" ".join(line.split()[:2]): line.split()[2:] for line in compared.splitlines()[2:]}
    assert rows["param lr"] == ["*", "0.1", "0.2"]
    assert rows["metric auc[holdout]"] == ["*", "0.93", "0.95"]
    comparison = as_json(run(server, "metrics", "compare", "cli-fraud", "1", "2", "--json"))
    assert isinstance(comparison, dict) and comparison["versions"] == [1, 2]

    run(server, "versions", "deprecate", "cli-fraud", "1", "-m", "leaky labels")
    deprecated = as_json(run(server, "versions", "list", "cli-fraud", "--deprecated", "--json"))
    assert isinstance(deprecated, dict) and [v["version"] for v in deprecated["items"]] == [1]
    unusable = run(server, "versions", "register", "cli-fraud", str(tmp_path / "missing"), code=2)
    assert "does not exist" in unusable.stderr
    assert "Missing argument" in run(server, "versions", "show", "cli-fraud", code=2).stderr


def test_stage_promote_approve_reject_alias_and_history(server: RegistryServer) -> None:
    with Client(server.url, server.admin_token) as admin:
        admin.create_model("cli-gov")
        for _ in range(2):
            admin.register_version("cli-gov", manifest=[_artifact()], code=None)
        admin.set_policy(
            {
                "transitions": [
                    {"from_stage": "development", "to_stage": "staging"},
                    {"from_stage": "staging", "to_stage": "production", "approvals": 1},
                ]
            },
            model="cli-gov",
        )
    alice = _token(server, "alice", "contributor")
    bob = _token(server, "bob", "approver")

    assert (
        "cli-gov v1 -> staging: done"
        in run(server, "stage", "cli-gov", "1", "staging", token=alice).stdout
    )
    opened = run(server, "stage", "cli-gov", "1", "production", "-m", "ship it", token=alice).stdout
    assert "needs approval; opened promotion request" in opened
    request_id = opened.split("opened promotion request ")[1].split()[0]
    assert request_id in run(server, "promotions", "list", "--state", "mine", token=bob).stdout

    denied = run(server, "approve", request_id, token=alice, code=1)
    assert "403 Permission denied" in denied.stderr and "permission: approve" in denied.stderr
    approved = run(server, "approve", request_id, "-m", "lgtm", token=bob).stdout
    assert "approved; promotion executed: cli-gov v1" in approved

    run(server, "stage", "cli-gov", "2", "staging", token=alice)
    pending = as_json(
        run(
            server,
            "promote",
            "cli-gov",
            "2",
            "--to",
            "production",
            "-m",
            "better",
            "--json",
            token=alice,
        )
    )
    assert isinstance(pending, dict) and "model.promotion_requested" in pending["events"]
    assert (
        "rejected: cli-gov v2"
        in run(server, "reject", pending["request_id"], "-m", "latency", token=bob).stdout
    )
    missing_comment = run(server, "stage", "cli-gov", "2", "production", token=alice, code=1)
    assert "field: comment  rule: required" in missing_comment.stderr

    run(server, "alias", "set", "cli-gov", "champion", "1", "-m", "in production", token=alice)
    assert "v1" in run(server, "alias", "history", "cli-gov", "champion").stdout
    run(server, "alias", "rm", "cli-gov", "champion", token=alice)

    table = run(server, "history", "cli-gov", "-n", "100").stdout
    assert "promotion_approved" in table and "bob" in table
    page = as_json(run(server, "history", "cli-gov", "--type", "promotion_rejected", "--json"))
    assert isinstance(page, dict)
    assert [(e["actor"], e["event_type"], e["reason"]) for e in page["items"]] == [
        ("bob", "model.promotion_rejected", "latency")
    ]


def test_tokens_whoami_and_the_event_log(server: RegistryServer) -> None:
    issued = as_json(
        run(
            server,
            "tokens",
            "create",
            "carol",
            "-r",
            "reader",
            "--expires-in",
            "30d",
            "-d",
            "dashboards",
            "--json",
        )
    )
    assert isinstance(issued, dict) and issued["secret"] and issued["expires_at"]
    me = as_json(run(server, "whoami", "--json", token=issued["secret"]))
    assert isinstance(me, dict) and (me["name"], me["permissions"]) == ("carol", ["read"])
    assert "carol" in run(server, "whoami", token=issued["secret"]).stdout
    listed = run(server, "tokens", "list").stdout
    assert any(
        line.split()[:3] == [issued["token_id"], "carol", "reader"] for line in listed.splitlines()
    )
    run(server, "tokens", "revoke", issued["token_id"], "-m", "done")
    revoked = run(server, "whoami", token=issued["secret"], code=1)
    assert "401 Authentication required" in revoked.stderr

    lines = run(server, "events", "tail", "-n", "3", "--json").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) == 3
    assert [e["log_position"] for e in events] == sorted(e["log_position"] for e in events)
    assert events[-1]["envelope"]["event_type"] == "token.revoked"
    table = run(server, "events", "tail", "-n", "2").stdout.splitlines()
    assert table[0].split()[:3] == ["position", "sealed", "at"] and "token.revoked" in table[-1]


def test_deleting_a_model_asks_first_and_frees_its_name(server: RegistryServer) -> None:
    run(server, "models", "create", "cli-doomed")
    # when the admin answers no to the question, nothing happens
    kept = CliRunner().invoke(
        APP,
        ["models", "delete", "cli-doomed", "-m", "mistake"],
        env=server.env(COLUMNS="200"),
        input="n\n",
    )
    assert kept.exit_code == 1 and "Aborted" in kept.stderr
    assert "cli-doomed" in run(server, "models", "show", "cli-doomed").stdout
    # when it is deleted with --yes, it is gone and the name can be taken again
    deleted = run(server, "models", "delete", "cli-doomed", "-m", "mistake", "--yes").stdout
    assert deleted.startswith("deleted cli-doomed: model.deleted")
    assert "404" in run(server, "models", "show", "cli-doomed", code=1).stderr
    run(server, "models", "create", "cli-doomed")


def test_an_auditor_lists_refused_requests_as_a_table_and_as_json(server: RegistryServer) -> None:
    # given a reader who tries to create a model, twice
    reader = as_json(run(server, "tokens", "create", "rory", "-r", "reader", "--json"))
    assert isinstance(reader, dict)
    for _ in range(2):
        refused = run(server, "models", "create", "not-mine", token=reader["secret"], code=1)
        assert "403" in refused.stderr
    # when the admin lists the refusals of that principal
    rows = as_json(run(server, "audit", "denials", "--principal", "rory", "--json"))
    # then the two refusals are one row, counted twice, saying what was missing
    assert isinstance(rows, list)
    assert [(r["code"], r["permission"], r["method"], r["route"], r["count"]) for r in rows] == [
        ("permission_denied", "write", "POST", "/api/v1/models", 2)
    ]
    # and people read the same as a table
    table = run(server, "audit", "denials", "--principal", "rory").stdout.splitlines()
    assert table[0].split()[:4] == ["last", "(UTC)", "count", "who"]
    assert "rory" in table[-1] and "permission denied: write" in table[-1]
    # and a code the API does not know is refused before any request
    bad = run(server, "audit", "denials", "--code", "nope", code=2)
    assert "--code" in bad.stderr


def test_the_installed_command_exit_codes_and_completion(server: RegistryServer) -> None:
    def modelreg(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["modelreg", *args],
            env=server.env(**env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = modelreg("whoami", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["name"] == "admin"
    refused = modelreg("models", "show", "no-such-model")
    assert (refused.returncode, refused.stderr.strip()) == (
        1,
        "modelreg: 404 Not found: no model is named 'no-such-model'",
    )
    assert modelreg("whoami", MODELREG_TOKEN="").returncode == 2
    unreachable = modelreg("whoami", "--url", "http://127.0.0.1:9", MODELREG_RETRIES="1")
    assert unreachable.returncode == 3 and "cannot reach the registry" in unreachable.stderr

    with Client(server.url, server.admin_token) as admin:
        admin.create_model("cli-complete-me")
    groups = modelreg(_MODELREG_COMPLETE="complete_bash", COMP_WORDS="modelreg mod", COMP_CWORD="1")
    assert groups.stdout.split() == ["models"]
    names = modelreg(
        _MODELREG_COMPLETE="complete_bash",
        COMP_WORDS="modelreg models show cli-comp",
        COMP_CWORD="3",
    )
    assert names.stdout.split() == ["cli-complete-me"]


def _artifact() -> ArtifactEntry:
    return ArtifactEntry(
        path="model.bin", external=True, uri="s3://models/gov/model.bin", sha256="1" * 64, size=10
    )


def _token(server: RegistryServer, principal: str, role: str) -> str:
    issued = as_json(run(server, "tokens", "create", principal, "-r", role, "--json"))
    assert isinstance(issued, dict)
    secret: str = issued["secret"]
    return secret
