"""Every schemathesis check, on every operation, in positive and negative modes, against a
real ``modelreg serve`` process: checks that re-send a request (without auth, with another
method, without a required header) reach the server over HTTP. A bounded number of
examples, so the run takes a few minutes on two cores at most."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from tests.support.registry_server import RegistryServer, registry_server

# Examples per operation and mode (derandomized): about 2,000 in all.
EXAMPLES = int(os.environ.get("ST_EXAMPLES", "17"))
M = "/api/v1/models"
# The two checks that compare the document's schemas with what the API accepts run on
# every operation but these, whose rules the document does not (or cannot) say yet:
# cursors only this service issued; an expiry in the future; a blob whose body must hash
# to its digest; cross-field rules (a policy's transitions, a promotion's stage or alias,
# a failed deployment's reason, a deployment's stage or alias); metric timestamps up to a
# day past now; "printable" text (owner); the tag filter and order syntax, event types as
# query values; nested policy and version-content structs (their names, unknown fields,
# artifact list); rules that depend on the server's settings (the blob size cap, presigned
# URLs only with the S3 store: opening an upload session); a webhook URL that must name a
# public http(s) address; a stage the model's policy defines (custom stages: a well-formed
# name the policy does not define is a 422 on a move and on its gate check).
COMPARED = [positive_data_acceptance, negative_data_rejection]
NOT_YET_EXACT = frozenset(
    {
        "GET /api/v1/models",
        "POST /api/v1/models",
        "GET /api/v1/models/{name}/versions",
        "POST /api/v1/models/{name}/versions",
        "GET /api/v1/models/{name}/versions/{version}/metrics",
        "POST /api/v1/models/{name}/versions/{version}/metrics",
        "PUT /api/v1/models/{name}/policy",
        "PUT /api/v1/policy",
        "POST /api/v1/models/{name}/promotions",
        "POST /api/v1/models/{name}/versions/{version}/stage",
        "GET /api/v1/models/{name}/versions/{version}/gate",
        "POST /api/v1/models/{name}/deployments/report",
        "POST /api/v1/models/{name}/versions/{version}/deployments",
        "GET /api/v1/events",
        "POST /api/v1/tokens",
        "POST /api/v1/models/{name}/uploads",
        "POST /api/v1/webhooks",
        "PUT /api/v1/models/{name}/blobs/{digest}",
    }
)


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


def _seed(client: httpx.Client) -> dict[str, Any]:
    """Something to find: generated requests are pointed at it half of the time."""

    def ok(response: httpx.Response) -> httpx.Response:
        assert response.status_code < 300, response.text
        return response

    ok(client.post(M, json={"name": "churn", "tags": {"team": "risk"}}))
    for n in (1, 2):
        artifact = {
            "path": "m.pkl",
            "external": True,
            "uri": f"s3://m/{n}",
            "sha256": f"{n:064x}",
            "size": n,
        }
        ok(client.post(f"{M}/churn/versions", json={"artifacts": [artifact]}))
        ok(
            client.post(
                f"{M}/churn/versions/{n}/metrics",
                json={"metrics": [{"key": "auc", "value": 0.9}]},
            )
        )
    ok(client.put(f"{M}/churn/aliases/candidate", json={"version": 1}))
    return {"name": "churn", "version": 1, "alias": "candidate", "key": "auc", "actor": "admin"}


def test_every_check_passes_on_every_operation(server: RegistryServer) -> None:
    auth = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as client:
        known = _seed(client)
        document = client.get("/schema/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results) > 50, "the document lost or broke operations"
    failures: list[str] = []
    # Every operation, in both modes, each with its own run: none is left to chance.
    strategies = [
        (operation.as_strategy(generation_mode=mode), mode)
        for operation in operations
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]

    def run(strategy: st.SearchStrategy[Any]) -> None:
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy, aim=st.booleans())
        def one(case: Any, aim: bool) -> None:
            label = f"{case.method} {case.path}"
            seen.add(label)
            # Only a valid case is aimed: a negative one must keep the value it was made with.
            positive = case.meta is not None and case.meta.generation.mode.is_positive
            if positive and aim:
                for name in case.path_parameters or {}:
                    if name in known:
                        case.path_parameters[name] = known[name]
            response = case.call(base_url=server.url, headers=auth, timeout=60)
            note(f"{label} -> {response.status_code}")
            try:
                case.validate_response(
                    response,
                    headers=auth,
                    transport_kwargs={"base_url": server.url, "headers": auth},
                    excluded_checks=COMPARED if label in NOT_YET_EXACT else [],
                )
            except FailureGroup as group:
                for failure in group.exceptions:
                    failures.append(
                        f"{case.method} {case.formatted_path}: {failure.title}:"
                        f" {failure.message[:300]} -> {response.status_code} {response.text[:200]}"
                    )

        one()

    seen: set[str] = set()
    for strategy, mode in strategies:
        try:
            run(strategy)
        except Unsatisfiable:
            # An operation with nothing a request could get wrong (no parameter, no body)
            # has no negative case; its positive run still reaches it.
            assert mode is GenerationMode.NEGATIVE

    assert len(seen) == len(operations), f"not reached: {len(operations) - len(seen)} operations"
    distinct = sorted(set(failures))
    assert not distinct, "\n".join(distinct[:80])
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as client:
        verified = client.get("/api/v1/audit/verify").json()
    assert verified["ok"] is True, verified
