"""Every schemathesis check, on every operation, in positive and negative modes, against a
real ``modelreg serve`` process: checks that re-send a request (without auth, with another
method, without a required header) reach the server over HTTP. A bounded number of
examples, so the run takes a few minutes on two cores at most."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # no stubs shipped
from schemathesis import GenerationMode
from schemathesis.core.failures import AcceptedNegativeData, FailureGroup
from schemathesis.core.result import Ok
from schemathesis.openapi.checks import RejectedPositiveData

from tests.support.registry_server import RegistryServer, registry_server

# Examples per operation and mode (derandomized): about 2,000 in all.
EXAMPLES = int(os.environ.get("ST_EXAMPLES", "17"))
M = "/api/v1/models"
# The two checks that compare the document's schemas with what the API accepts run on
# every operation. A schema-valid request may still be refused by a rule no JSON Schema
# can state; such a refusal is forgiven only where the problem names one of these fields
# (by prefix), so everything else about the operation is compared:
INEXPRESSIBLE: dict[str, tuple[str, ...]] = {
    # an opaque cursor only this service issued (sealed, bound to its filter)
    "GET /api/v1/models": ("cursor",),
    "GET /api/v1/models/{name}/versions": ("cursor",),
    # "printable" text: Unicode categories, which ECMA regexes here cannot name
    "POST /api/v1/models": ("owner",),
    # uniqueness within lists (transitions, aliases) and rules across a policy's fields
    "PUT /api/v1/models/{name}/policy": ("policy",),
    "PUT /api/v1/policy": ("policy",),
    # an expiry in the future: relative to the server's clock
    "POST /api/v1/tokens": ("expires_at",),
    # the server's blob size cap (a setting), and presigned URLs only with the S3 store
    "POST /api/v1/models/{name}/uploads": ("size", "presigned"),
    # a URL naming a public http(s) address: decided by resolving the host
    "POST /api/v1/webhooks": ("url",),
    # the body must hash to the digest in the path
    "PUT /api/v1/models/{name}/blobs/{digest}": ("digest",),
    # an artifact list: paths unique and safe (no dot segments, nothing hidden, no control
    # characters), a stored file's digest held by the store, an external one's URI given
    "POST /api/v1/models/{name}/versions": ("content.artifacts",),
    # metric timestamps at most a day past the server's clock
    "POST /api/v1/models/{name}/versions/{version}/metrics": ("metrics",),
    # a stage the model's governance policy defines (custom stages): state, not schema
    "POST /api/v1/models/{name}/versions/{version}/stage": ("to",),
    "GET /api/v1/models/{name}/versions/{version}/gate": ("to",),
    "POST /api/v1/models/{name}/promotions": ("target_stage",),
    "POST /api/v1/models/{name}/versions/{version}/deployments": ("desired_stage",),
    # a role granted must be defined (built in or by an earlier event): state, not schema
    "POST /api/v1/access/grants": ("role",),
}


def _inexpressible(label: str, failure: Any, response: httpx.Response) -> bool:
    """A schema-valid request refused by a rule the document cannot state (INEXPRESSIBLE)."""
    if not isinstance(failure, RejectedPositiveData):
        return False
    try:
        field = response.json().get("field") or ""
    except ValueError:
        return False
    return any(field.startswith(prefix) for prefix in INEXPRESSIBLE.get(label, ()))


# Schemathesis names the mutated query parameter in one of two ways.
_QUERY_PARAMETER = re.compile(
    r"parameter `([^`]+)` in query - violates|query: violates `[^`]+` at /properties/([^/\s]+)"
)


def _mutated_parameter(message: str) -> str | None:
    named = _QUERY_PARAMETER.search(message)
    return None if named is None else named.group(1) or named.group(2)


def _unsendable(case: Any, failure: Any, response: Any) -> bool:
    """A "negative" query value schemathesis did not actually send: an undeclared parameter
    with no value (``{"": []}``) or a null goes out as no parameter at all (judged by the
    URL sent), and an object goes out as the list of its keys (the HTTP client iterates
    it), which may well be valid."""
    if not isinstance(failure, AcceptedNegativeData):
        return False
    sent = parse_qs(urlsplit(str(response.request.url)).query, keep_blank_values=True)
    if "query: violates `additionalProperties`" in failure.message:
        declared = {p.name for p in case.operation.query}
        return not (set(sent) - declared)
    name = _mutated_parameter(failure.message)
    if name is None:
        return False
    # A literal ``null`` reads as "not given" (Litestar's query parsing), like no parameter.
    return (
        name not in sent or sent[name] == ["null"] or isinstance((case.query or {}).get(name), dict)
    )


def _query_schemas(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each operation's query parameters' schemas, by ``METHOD path`` and name."""
    found: dict[str, dict[str, Any]] = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict):
                found[f"{method.upper()} {path}"] = {
                    p["name"]: p.get("schema", {})
                    for p in operation.get("parameters", [])
                    if p.get("in") == "query"
                }
    return found


def _not_negative(schemas: dict[str, Any], case: Any, failure: Any, response: Any) -> bool:
    """A "negative" query value that the parameter's own schema accepts after all (a value
    mutated in one branch of a ``oneOf`` can land in another): not a rejection missed."""
    if not isinstance(failure, AcceptedNegativeData):
        return False
    name = _mutated_parameter(failure.message)
    if name is None or name not in schemas or "$ref" in str(schemas[name]):
        return False
    validator = Draft202012Validator(schemas[name])
    value = (case.query or {}).get(name)
    # A number goes out as its text, which a string parameter may accept.
    sent = parse_qs(urlsplit(str(response.request.url)).query, keep_blank_values=True).get(name)
    return bool(
        validator.is_valid(value)
        or (sent is not None and (validator.is_valid(sent) or validator.is_valid(sent[0])))
    )


def _refused_by_the_http_parser(response: Any) -> bool:
    """uvicorn's HTTP parser refused the bytes before any route saw them (its own plain-text
    400): a request the transport could not carry, not an answer of the API's."""
    body = response.content.decode("utf-8", "replace") if response.content else ""
    return bool(response.status_code == 400 and "Invalid HTTP request received." in body)


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
    query_schemas = _query_schemas(document)
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
                )
            except FailureGroup as group:
                for failure in group.exceptions:
                    if (
                        _inexpressible(label, failure, response)
                        or _unsendable(case, failure, response)
                        or _refused_by_the_http_parser(response)
                        or _not_negative(query_schemas.get(label, {}), case, failure, response)
                    ):
                        continue
                    failures.append(
                        f"{case.method} {case.formatted_path} {case.query!r}: {failure.title}:"
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
