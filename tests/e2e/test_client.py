"""The Python client against a real registry: ``AsyncClient`` in process (the API app over
a fresh schema), ``Client`` against a ``modelreg serve`` process, and retries through a
proxy that loses answers."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar

from events.access import Role
from service.api.router import api_app_kwargs
from service.client import (
    AsyncClient,
    Client,
    Conflict,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    RetryPolicy,
    Unauthenticated,
    Unreachable,
    ValidationFailed,
)
from service.client.models import ArtifactEntry, CodeReference, Receipt
from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.flaky_proxy import FlakyProxy, body_of
from tests.support.registry_server import RegistryServer, registry_server

FAST = RetryPolicy(attempts=4, backoff=0.05, max_backoff=0.2)
CODE = CodeReference(
    repository="https://git.example.com/ml/churn.git", commit="a" * 40, path="train.py"
)
POLICY = {
    "transitions": [
        {"from_stage": "development", "to_stage": "staging"},
        {"from_stage": "staging", "to_stage": "production", "approvals": 1},
        {"from_stage": "production", "to_stage": "archived"},
    ],
}


class Counting(httpx.AsyncBaseTransport):
    """Counts the requests that reach the app."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.seen: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path))
        return await self.inner.handle_async_request(request)


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        yield running


def in_process(api: Api, token: str | None = None, **options: Any) -> tuple[AsyncClient, Counting]:
    transport = Counting(httpx.ASGITransport(app=Litestar(**api_app_kwargs(api.services))))  # type: ignore[arg-type]
    return AsyncClient(
        "http://modelreg.test", token or api.admin, transport=transport, **options
    ), transport


def artifacts(root: Path, tag: str = "1") -> Path:
    (root / "out").mkdir(parents=True, exist_ok=True)
    (root / "out" / "model.pkl").write_bytes(b"weights-" + tag.encode() * 1000)
    (root / "out" / "meta.json").write_text('{"framework": "xgboost"}')
    return root / "out"


# ---------------------------------------------------------------- AsyncClient, in process


async def test_async_client_walks_a_model_through_its_life(api: Api, tmp_path: Path) -> None:
    alice_secret = await api.token("alice", Role.CONTRIBUTOR)
    bob_secret = await api.token("bob", Role.APPROVER)
    admin, _ = in_process(api)
    alice, _ = in_process(api, alice_secret)
    bob, _ = in_process(api, bob_secret)
    async with admin, alice, bob:
        await admin.set_policy(POLICY, comment="production needs an approval")

        # register: the model is created on the way, the files hashed, metrics logged
        first = await alice.register_version(
            "churn",
            artifacts_dir=artifacts(tmp_path),
            params={"lr": 0.1, "depth": 6},
            metrics={"auc": 0.91},
            metrics_dataset="holdout",
            code=CODE,
        )
        assert (first.version, first.model_created, len(first.metrics)) == (1, True, 1)
        row = await alice.get_version("churn", 1)
        assert row.content is not None and row.content.code == CODE
        assert {a.path: a.sha256 for a in row.content.artifacts} == {
            "meta.json": hashlib.sha256(b'{"framework": "xgboost"}').hexdigest(),
            "model.pkl": hashlib.sha256(b"weights-" + b"1" * 1000).hexdigest(),
        }
        assert row.content.parameters == {"lr": 0.1, "depth": 6}
        assert [(m.key, m.dataset, m.value) for m in row.metrics] == [("auc", "holdout", 0.91)]
        # a search right after the write already sees it (read-your-writes)
        assert [m.name for m in (await alice.list_models("chu*")).items] == ["churn"]

        second = await alice.register_version(
            "churn",
            manifest=row.content.artifacts,
            params={"lr": 0.2, "depth": 6},
            code=None,
            dependencies=None,
        )
        assert (second.version, second.model_created) == (2, False)
        compared = await alice.compare_versions("churn", [1, 2, 9])
        assert compared.missing == (9,)
        assert {p.name: (p.values, p.differs) for p in compared.params}["lr"] == ((0.1, 0.2), True)

        # stages: straight to staging; production opens a request bob approves
        assert (await alice.transition("churn", 1, "staging")).executed
        pending = await alice.transition("churn", 1, "production", comment="auc 0.91 on holdout")
        assert pending.pending and pending.request_id
        # bob is someone else: his client waits for alice's write before reading
        assert await bob.wait_for(pending.position) == pending.position
        assert [r.request_id for r in await bob.list_promotions("mine")] == [pending.request_id]
        approved = await bob.approve(pending.request_id, "lgtm")
        assert approved.executed
        model = await alice.get_model("churn")
        assert model.stages["production"] == 1
        assert [i.version for i in await alice.timeline("churn", stage="production")] == [1]

        # aliases, deployments, the audit trail, the log
        await alice.set_alias("churn", "challenger", 2, comment="a/b")
        assert (await alice.get_version("churn", "challenger")).version == 2
        await alice.remove_alias("churn", "challenger")
        started = await alice.start_deployment(
            "churn", 1, environment="prod", target="k8s/churn", desired_stage="production"
        )
        assert started.request_id
        await alice.report_deployment("churn", started.request_id, "succeeded")
        (place,) = await alice.deployments("churn")
        assert (place.live_version, place.drift) == (1, False)
        assert [r.status for r in await alice.deployment_runs("churn")] == ["succeeded"]
        history = await alice.history("churn", oldest_first=True, limit=1000)
        trail = [(e.actor, e.event_type) for e in history.items]
        assert trail[0] == ("alice", "model.registered")
        assert ("bob", "model.promotion_approved") in trail
        assert (await alice.wait_for(model="churn")) == alice.last_position
        head = await admin.head_position()
        assert head >= (alice.last_position or 0)
        log = await admin.events(head - 1)
        assert [e.log_position for e in log.items] == [head]
        assert (await admin.verify()).ok


async def test_many_log_metrics_calls_become_few_requests(api: Api, tmp_path: Path) -> None:
    client, counting = in_process(api, metrics_flush_interval=3600)
    async with client:
        await client.register_version("churn", artifacts_dir=artifacts(tmp_path), code=None)
        counting.seen.clear()
        for step in range(2500):
            await client.log_metric("churn", 1, "loss", 1.0 / (step + 1), step=step)
        assert client.pending_metrics == 500  # two full batches went out on the way
        series = await client.metric_series("churn", 1)  # a read sends the rest first
        posts = [path for method, path in counting.seen if method == "POST"]
        assert posts == ["/api/v1/models/churn/versions/1/metrics"] * 3
        assert [(s.key, s.points, s.first_step, s.last_step) for s in series] == [
            ("loss", 2500, 0, 2499)
        ]
        best = await client.best_metric("churn", 1, "loss", goal="min")
        assert best.step == 2499


async def test_refusals_raise_typed_errors_carrying_the_problem(api: Api) -> None:
    alice_secret = await api.token("alice", Role.CONTRIBUTOR)
    admin, _ = in_process(api)
    alice, counting = in_process(api, alice_secret)
    async with admin, alice:
        await admin.set_policy(POLICY)
        await alice.create_model("churn")
        with pytest.raises(Conflict) as taken:
            await alice.create_model("churn")
        assert (taken.value.status, taken.value.code) == (409, "already_exists")
        with pytest.raises(NotFound) as missing:
            await alice.get_model("nope")
        assert (missing.value.code, missing.value.details, missing.value.problem["type"]) == (
            "not_found",
            {"name": "nope"},
            "urn:modelreg:not_found",
        )
        with pytest.raises(ValidationFailed) as invalid:
            await alice.register_version("churn", manifest=[], code=None, dependencies=None)
        assert (invalid.value.status, invalid.value.field, invalid.value.rule) == (
            422,
            "content.artifacts",
            "required",
        )
        with pytest.raises(PermissionDenied) as denied:
            await alice.create_token("mallory", ["admin"])
        assert denied.value.details["permission"] == "admin"
        assert not [p for m, p in counting.seen if p == "/api/v1/tokens" and m == "POST"][
            1:
        ]  # refused once, not retried

        # tokens: issue, use, list, revoke
        issued = await admin.create_token("carol", [Role.READER], description="dashboards")
        assert issued.secret
        carol, _ = in_process(api, issued.secret)
        async with carol:
            me = await carol.whoami()
            assert (me.name, me.roles) == ("carol", (Role.READER,))
            assert "carol" in [t.principal for t in await admin.list_tokens()]
            await admin.revoke_token(issued.token_id, "test over")
            with pytest.raises(Unauthenticated):
                await carol.whoami()


async def test_a_write_conditional_on_a_stale_version_is_refused_and_records_nothing(
    api: Api,
) -> None:
    # given two people who read the same model
    admin, _ = in_process(api)
    async with admin:
        await admin.create_model("churn", description="first")
        seen = await admin.model_version("churn")
        other = await admin.update_model(
            "churn", description="someone else's edit", if_version=seen
        )
        assert other.stream_version == seen + 1
        head = await admin.head_position()

        # when the first writes on the state they saw, after the other wrote
        with pytest.raises(PreconditionFailed) as stale:
            await admin.set_model_tag("churn", "tier", "gold", if_version=seen)

        # then it is refused with 412, nothing is recorded, and the fresh version works
        assert stale.value.status == 412
        assert await admin.head_position() == head
        assert await admin.model_version("churn") == other.stream_version
        assert "tier" not in dict((await admin.get_model("churn")).tags)
        tagged = await admin.set_model_tag("churn", "tier", "gold", if_version=other.stream_version)
        assert tagged.stream_version == other.stream_version + 1
        assert dict((await admin.get_model("churn")).tags)["tier"] == "gold"


async def test_the_registry_policy_takes_a_conditional_write_too(api: Api) -> None:
    admin, _ = in_process(api)
    async with admin:
        seen = await admin.policy_version()
        await admin.set_policy(POLICY, if_version=seen)
        with pytest.raises(PreconditionFailed):
            await admin.set_policy(POLICY, comment="stale", if_version=seen)
        assert await admin.policy_version() == seen + 1


# ---------------------------------------------------------------- Client, against `modelreg serve`


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


def git(cwd: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
        "HOME": str(cwd),
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


TRAINING_SCRIPT = """\
from service.client import Client
reg = Client()
reg.register_version("fraud", artifacts_dir="out/", params={"lr": 0.05, "trees": 300}, metrics={"auc": 0.93})
"""


def test_three_lines_in_a_training_script_register_a_version_with_its_code(
    server: RegistryServer, tmp_path: Path
) -> None:
    # a training checkout: the script, its output directory, a commit and a remote
    repo = tmp_path / "repo"
    artifacts(repo)
    (repo / "train.py").write_text(TRAINING_SCRIPT)
    git(repo, "init", "-q")
    git(repo, "add", "train.py")
    git(repo, "commit", "-q", "-m", "train")
    git(repo, "remote", "add", "origin", "https://ci:secret@git.example.com/ml/fraud.git")

    done = subprocess.run(
        [sys.executable, "train.py"],
        cwd=repo,
        env=server.env(PYTHONPATH=str(Path.cwd())),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    with Client(server.url, server.admin_token) as reg:
        row = reg.get_version("fraud", 1)
    assert row.content is not None
    assert row.content.code == CodeReference(
        repository="https://git.example.com/ml/fraud.git",
        commit=git(repo, "rev-parse", "HEAD"),
        path="train.py",
    )
    assert (
        row.content.dependencies is not None
        and row.content.dependencies.python_version.startswith("3.")
    )
    assert [a.path for a in row.content.artifacts] == ["meta.json", "model.pkl"]
    assert [(m.key, m.value) for m in row.metrics] == [("auc", 0.93)]
    assert row.tags == {}  # the checkout is clean


def test_a_lost_answer_is_retried_with_the_same_key_and_registers_once(
    server: RegistryServer, tmp_path: Path
) -> None:
    with FlakyProxy(server.url) as proxy, Client(proxy.url, server.admin_token, retry=FAST) as reg:
        reg.create_model("retry-sync")
        proxy.drop_responses(1, match=b"POST /api/v1/models/retry-sync/versions ")
        proxy.drop_responses(1, match=b"POST /api/v1/models/retry-sync/versions/1/metrics ")

        result = reg.register_version(
            "retry-sync", artifacts_dir=artifacts(tmp_path), metrics={"auc": 0.9}, code=None
        )

        # the server answered twice; the client saw only the second, replayed answer
        assert len(proxy.dropped) == 2
        first_answer = msgspec.json.decode(body_of(proxy.dropped[0]), type=Receipt)
        assert result.receipt == first_answer
        posts = proxy.seen("POST /api/v1/models/retry-sync/versions ")
        assert len(posts) == 2 and posts[0].header("Idempotency-Key") == posts[1].header(
            "Idempotency-Key"
        )
        # exactly one version, with exactly one metrics batch
        assert [v.version for v in reg.list_versions("retry-sync").items] == [1]
        assert reg.get_model("retry-sync").latest_version == 1
        assert [(s.key, s.points) for s in reg.metric_series("retry-sync", 1)] == [("auc", 1)]


async def test_the_async_client_retries_lost_answers_too(server: RegistryServer) -> None:
    with FlakyProxy(server.url) as proxy:
        async with AsyncClient(proxy.url, server.admin_token, retry=FAST) as reg:
            await reg.create_model("retry-async")
            await reg.register_version("retry-async", manifest=[_entry()], code=None)
            proxy.drop_responses(2, match=b"POST /api/v1/models/retry-async/versions/1/metrics ")
            for step in range(10):
                await reg.log_metrics(
                    "retry-async", 1, {"loss": 1 / (step + 1), "acc": step / 10}, step=step
                )
            (receipt,) = await reg.flush()
            assert len(proxy.dropped) == 2
            assert receipt == msgspec.json.decode(body_of(proxy.dropped[0]), type=Receipt)
            series = await reg.metric_series("retry-async", 1)
            assert sorted((s.key, s.points) for s in series) == [("acc", 10), ("loss", 10)]


def _entry() -> ArtifactEntry:
    return ArtifactEntry(
        path="model.bin", external=True, uri="s3://models/x/model.bin", sha256="0" * 64, size=1
    )


def test_busy_answers_are_retried_after_their_retry_after_and_refusals_are_not(
    server: RegistryServer,
) -> None:
    with FlakyProxy(server.url) as proxy, Client(proxy.url, server.admin_token, retry=FAST) as reg:
        proxy.fail_requests(1, status=503, retry_after="1", match=b"GET /api/v1/me ")
        proxy.fail_requests(2, status=429, retry_after=None, match=b"POST /api/v1/models ")
        began = time.monotonic()
        assert reg.whoami().name == "admin"
        assert time.monotonic() - began >= 0.9  # waited as told
        assert reg.create_model("busy").model == "busy"
        assert (
            len(proxy.seen("GET /api/v1/me ")) == 2 and len(proxy.seen("POST /api/v1/models ")) == 3
        )
        keys = {r.header("Idempotency-Key") for r in proxy.seen("POST /api/v1/models ")}
        assert len(keys) == 1

        with pytest.raises(NotFound):
            reg.get_model("no-such-model")
        assert len(proxy.seen("GET /api/v1/models/no-such-model")) == 1


def test_an_unreachable_registry_raises_unreachable_after_every_retry() -> None:
    with FlakyProxy("http://127.0.0.1:9") as proxy:  # the proxy's upstream refuses connections
        dead = proxy.url
    reg = Client(dead, "t", retry=FAST)
    with pytest.raises(Unreachable, match="after 4 attempts") as failed:
        reg.whoami()
    assert failed.value.status is None and not failed.value.refused


def test_buffered_metrics_are_sent_on_close_and_reads_see_the_writes(
    server: RegistryServer, tmp_path: Path
) -> None:
    reg = Client(server.url, server.admin_token)
    v = reg.register_version("flush-on-close", artifacts_dir=artifacts(tmp_path), code=None)
    for step in range(5):
        reg.log_metrics("flush-on-close", v.version, {"loss": 1 / (step + 1)}, step=step)
    assert reg.pending_metrics == 5
    reg.close()
    with Client(server.url, server.admin_token) as other:
        assert other.wait_for(reg.last_position, model="flush-on-close") == reg.last_position
        assert [(m.key, m.step) for m in other.get_metrics("flush-on-close", v.version)] == [
            ("loss", 4)
        ]
