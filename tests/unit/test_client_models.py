"""The client's own pieces that need no server: its structs against the server's, the
generated sync client, the metric buffer, retry delays, configuration."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import httpx
import msgspec
import pytest

from eventlog.verify import Break, VerifyReport
from events.access_grants import Right
from projections.paging import Page as ServerPage
from projections.views import (
    approvals,
    audit_timeline,
    deployments,
    metric_history,
    model_catalogue,
    model_versions,
    stage_timeline,
)
from service.api import common, routes_access, routes_governance, routes_operations, schemas
from service.client import Client, ConfigurationError, Conflict, RetryPolicy, _unasync
from service.client import models as client
from service.client._common import MetricBuffer, points
from service.client._transport import query, resolve
from service.commands.tokens import Principal

PAIRS: list[tuple[type[msgspec.Struct], type[msgspec.Struct]]] = [
    (client.Receipt, common.Receipt),
    (client.ModelRow, model_catalogue.ModelRow),
    (client.VersionRow, model_versions.VersionRow),
    (client.MetricValue, model_versions.MetricValue),
    (client.MetricSample, metric_history.MetricSample),
    (client.MetricSeries, metric_history.MetricSeries),
    (client.ParamComparison, metric_history.ParamComparison),
    (client.MetricComparison, metric_history.MetricComparison),
    (client.Comparison, metric_history.Comparison),
    (client.Page, ServerPage),
    (client.Vote, approvals.Vote),
    (client.ApprovalRequest, approvals.ApprovalRequest),
    (client.StageInterval, stage_timeline.StageInterval),
    (client.AliasInterval, stage_timeline.AliasInterval),
    (client.PolicyView, routes_governance.PolicyView),
    (client.DeploymentRun, deployments.Run),
    (client.Place, deployments.Place),
    (client.AuditEntry, audit_timeline.AuditEntry),
    (client.AuditPage, audit_timeline.AuditPage),
    (client.LoggedEvent, routes_operations.LoggedEventView),
    (client.EventsPage, routes_operations.EventsPage),
    (client.Break, Break),
    (client.VerifyReport, VerifyReport),
    (client.Principal, Principal),
    (client.Right, Right),
    (client.RoleInfo, routes_access.RoleInfo),
    (client.GrantInfo, routes_access.GrantInfo),
    (client.AccessView, routes_access.AccessView),
    (client.AccessCheck, routes_access.AccessCheck),
    (client.ServiceAccountInfo, routes_access.ServiceAccountInfo),
    (client.IssuedToken, schemas.IssuedToken),
    (client.TokenInfo, schemas.TokenInfo),
    (client.Metric, schemas.Metric),
]


@pytest.mark.parametrize(("mine", "theirs"), PAIRS, ids=[m.__name__ for m, _ in PAIRS])
def test_client_structs_mirror_the_server_field_for_field(
    mine: type[msgspec.Struct], theirs: type[msgspec.Struct]
) -> None:
    assert mine.__struct_fields__ == theirs.__struct_fields__


def test_the_client_does_not_import_the_server_stack() -> None:
    code = (
        "import sys, service.client; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('asyncpg', 'litestar', 'nats', 'uvicorn', 'projections', 'typer')); print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_sync_client_is_generated_from_the_async_one() -> None:
    assert _unasync.main(["--check"]) == 0, "run: python -m service.client._unasync"


def test_buffered_metrics_are_sealed_into_batches_that_keep_their_keys() -> None:
    now = [0.0]
    buffer = MetricBuffer(batch_size=3, interval=5.0, clock=lambda: now[0])
    buffer.add("churn", 1, points({"loss": 0.5}, step=0))
    assert not buffer.due()
    now[0] = 5.0
    assert buffer.due()  # the oldest point waited long enough
    buffer.add(
        "churn",
        1,
        points([client.Metric(key="loss", value=v, step=i) for i, v in enumerate((0.4, 0.3, 0.2))]),
    )
    buffer.add("churn", 2, points({"auc": 0.9}))
    buffer.seal()
    batches = list(buffer.outbox)
    assert [(b.version, len(b.points)) for b in batches] == [(1, 3), (1, 1), (2, 1)]
    assert len({b.key for b in batches}) == 3 and buffer.pending == 5
    first = buffer.next_batch()
    assert (
        first is batches[0] and buffer.next_batch() is first
    )  # resent with the same key until done
    buffer.done(first)
    assert buffer.next_batch() is batches[1] and buffer.pending == 2


def test_metric_points_get_a_timestamp_when_logged_and_must_be_finite_numbers() -> None:
    at = datetime(2026, 3, 3, 14, 3, tzinfo=UTC)
    (point,) = points({"auc": 1}, step=3, dataset="holdout", now=lambda: at)
    assert point == client.Metric(key="auc", value=1.0, step=3, dataset="holdout", timestamp=at)
    with pytest.raises(ValueError, match=r"'loss'.*finite"):
        points({"loss": float("nan")})
    with pytest.raises(TypeError, match="number"):
        points({"loss": "0.3"})  # type: ignore[arg-type]


def test_retry_delays_back_off_with_jitter_and_honour_retry_after() -> None:
    policy = RetryPolicy(backoff=0.5, max_backoff=4.0)
    for retry, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)):
        delays = [policy.delay(retry) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert policy.delay(1, retry_after=7.0) == 7.0
    assert RetryPolicy(max_retry_after=3.0).delay(1, retry_after=30.0) == 3.0


def test_configuration_comes_from_arguments_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MODELREG_URL", raising=False)
    monkeypatch.delenv("MODELREG_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="MODELREG_TOKEN"):
        resolve(None, None)
    assert resolve(None, "t") == ("http://127.0.0.1:8000", "t")
    monkeypatch.setenv("MODELREG_URL", "https://registry.example.com/api/v1/")
    monkeypatch.setenv("MODELREG_TOKEN", "from-env")
    assert resolve(None, None) == ("https://registry.example.com", "from-env")
    assert resolve("http://other:9000", "arg") == ("http://other:9000", "arg")
    with pytest.raises(ConfigurationError, match="http"):
        resolve("ftp://x", "t")


def test_query_parameters_repeat_lists_and_spell_booleans_as_the_api_reads_them() -> None:
    assert query(
        {
            "tag": ["a=1", "b"],
            "archived": False,
            "q": None,
            "stage": [client.Stage.STAGING],
            "limit": 5,
        }
    ) == [
        ("tag", "a=1"),
        ("tag", "b"),
        ("archived", "false"),
        ("stage", "staging"),
        ("limit", "5"),
    ]


def test_a_receipt_says_whether_a_promotion_waits_or_ran() -> None:
    def receipt(*events: str) -> client.Receipt:
        return client.Receipt(events=list(events), stream_version=1, request_id="r1")

    assert receipt("model.promotion_requested").pending
    assert receipt("model.promotion_approved").pending
    done = receipt(
        "model.promotion_approved", "model.promotion_executed", "model.stage_transitioned"
    )
    assert done.executed and not done.pending
    assert not receipt("model.deployment_started").pending


def test_a_copy_of_a_request_still_running_on_the_server_is_retried_other_conflicts_are_not() -> (
    None
):
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        key = request.headers["Idempotency-Key"]
        seen.append(key)
        if (
            request.url.path == "/api/v1/models" and len(seen) == 1
        ):  # the first attempt is still running
            return httpx.Response(
                409, json={"status": 409, "code": "conflict", "details": {"key": key}}
            )
        if request.url.path == "/api/v1/models":
            return httpx.Response(
                201, json={"events": ["model.registered"], "stream_version": 1, "model": "m"}
            )
        return httpx.Response(
            409, json={"status": 409, "code": "already_exists", "details": {"name": "m"}}
        )

    with Client(
        "http://registry.test",
        "t",
        retry=RetryPolicy(backoff=0.01),
        transport=httpx.MockTransport(answer),
    ) as reg:
        assert reg.create_model("m").model == "m"
        assert len(seen) == 2 and seen[0] == seen[1]
        with pytest.raises(Conflict):
            reg.request_promotion("m", 1, justification="x")
        assert len(seen) == 3
