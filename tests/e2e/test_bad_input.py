"""Bad input of every kind gets a 4xx problem+json naming the field and the rule, and
leaves the log unchanged: wrong types, missing and unknown fields, malformed JSON,
oversized bodies and batches, invalid names, aliases and keys, NUL characters, NaN and
infinite metric values, unknown stages, bad cursors, bad as_of values, positions beyond
the head, numbers too large for any column, malformed headers.

Each group runs against one registry (a model ``churn`` with a version); after each case
the events table must be as it was, and after each group the views must still answer
(a poisoned event would stop them)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from dataclasses import field as default
from typing import Any

import pytest

from eventlog.log import head_position
from tests.support.api import Api, running_api
from tests.support.database import Database

M = "/api/v1/models"
V = f"{M}/churn/versions"
ART = {
    "path": "model.pkl",
    "external": True,
    "uri": "s3://models/churn/1/model.pkl",
    "sha256": "a" * 64,
    "size": 1234,
}
JSON = {"content-type": "application/json"}
MAX_BODY = 8 * 1024 * 1024
UNSET: Any = object()


@dataclass(frozen=True)
class Bad:
    what: str
    method: str
    path: str
    status: int
    field: str
    rule: str
    json: Any = UNSET
    content: bytes | None = None
    headers: Mapping[str, str | bytes] = default(default_factory=dict)


def raw(text: str) -> bytes:
    return text.encode()


def metrics(*points: dict[str, Any]) -> dict[str, Any]:
    return {"metrics": list(points)}


BODIES = [
    Bad("a wrong type", "POST", M, 400, "name", "type", json={"name": 5}),
    Bad(
        "null for a string",
        "PATCH",
        f"{M}/churn",
        400,
        "description",
        "type",
        json={"description": None},
    ),
    Bad("a missing field", "POST", M, 400, "name", "required", json={"description": "no name"}),
    Bad(
        "an unknown field",
        "POST",
        M,
        400,
        "colour",
        "unknown_field",
        json={"name": "x", "colour": "red"},
    ),
    Bad(
        "a nested unknown field",
        "POST",
        V,
        400,
        "artifacts[0].colour",
        "unknown_field",
        json={"artifacts": [{**ART, "colour": "red"}]},
    ),
    Bad(
        "a nested wrong type",
        "POST",
        V,
        400,
        "artifacts[0].size",
        "type",
        json={"artifacts": [{**ART, "size": "big"}]},
    ),
    Bad(
        "a nested missing field",
        "POST",
        V,
        400,
        "artifacts[0].sha256",
        "required",
        json={"artifacts": [{k: v for k, v in ART.items() if k != "sha256"}]},
    ),
    Bad(
        "a list for a parameter value",
        "POST",
        V,
        400,
        "params[...]",
        "type",
        json={"artifacts": [ART], "params": {"lr": [1]}},
    ),
    Bad(
        "truncated JSON", "POST", M, 400, "body", "json", content=raw('{"name": "x"'), headers=JSON
    ),
    Bad("not JSON at all", "POST", M, 400, "body", "json", content=raw("name=x"), headers=JSON),
    Bad(
        "trailing garbage",
        "POST",
        M,
        400,
        "body",
        "json",
        content=raw('{"name": "x"} {}'),
        headers=JSON,
    ),
    Bad("no body", "POST", M, 400, "body", "required", content=b"", headers=JSON),
    Bad("a null body", "POST", M, 400, "body", "required", json=None),
    Bad("an array body", "POST", M, 400, "body", "type", json=[{"name": "x"}]),
    Bad(
        "a body over 8 MiB",
        "POST",
        M,
        413,
        "body",
        "length",
        content=raw('{"name": "big", "description": "') + b"a" * MAX_BODY + b'"}',
        headers=JSON,
    ),
    Bad(
        "a description over 64 KiB",
        "PATCH",
        f"{M}/churn",
        422,
        "description",
        "length",
        json={"description": "a" * 70_000},
    ),
    Bad(
        "an artifact without a valid digest",
        "POST",
        V,
        422,
        "content.artifacts[0].sha256",
        "pattern",
        json={"artifacts": [{**ART, "sha256": "not-hex"}]},
    ),
    Bad(
        "a negative artifact size",
        "POST",
        V,
        422,
        "content.artifacts[0].size",
        "range",
        json={"artifacts": [{**ART, "size": -1}]},
    ),
    Bad(
        "an unknown role",
        "POST",
        "/api/v1/tokens",
        400,
        "roles[0]",
        "enum",
        json={"principal": "eve", "roles": ["god"]},
    ),
    Bad(
        "no role",
        "POST",
        "/api/v1/tokens",
        422,
        "roles",
        "required",
        json={"principal": "eve", "roles": []},
    ),
    Bad(
        "an expiry in the past",
        "POST",
        "/api/v1/tokens",
        422,
        "expires_at",
        "range",
        json={"principal": "eve", "roles": ["reader"], "expires_at": "2001-01-01T00:00:00Z"},
    ),
    Bad(
        "an expiry without a zone",
        "POST",
        "/api/v1/tokens",
        400,
        "expires_at",
        "type",
        json={"principal": "eve", "roles": ["reader"], "expires_at": "2099-01-01T00:00:00"},
    ),
    Bad(
        "an unknown deployment outcome",
        "POST",
        f"{M}/churn/deployments/report",
        400,
        "status",
        "enum",
        json={"deployment_id": "d-1", "status": "exploded"},
    ),
    Bad(
        "a policy with a way out of archived",
        "PUT",
        "/api/v1/policy",
        422,
        "policy.transitions[0]",
        "archived_is_final",
        json={"policy": {"transitions": [{"from_stage": "archived", "to_stage": "staging"}]}},
    ),
    Bad(
        "a policy gate without a bound",
        "PUT",
        "/api/v1/policy",
        422,
        "policy.transitions[0].gates[0]",
        "gate_needs_bound",
        json={
            "policy": {
                "transitions": [
                    {
                        "from_stage": "staging",
                        "to_stage": "production",
                        "gates": [{"metric": "auc"}],
                    }
                ]
            }
        },
    ),
    Bad(
        "a policy with an unknown field",
        "PUT",
        "/api/v1/policy",
        400,
        "policy.transitions[0].approval",
        "unknown_field",
        json={
            "policy": {
                "transitions": [{"from_stage": "staging", "to_stage": "production", "approval": 1}]
            }
        },
    ),
    Bad(
        "a request TTL too long for any column",
        "PUT",
        "/api/v1/policy",
        422,
        "policy.request_ttl_seconds",
        "range",
        json={"policy": {"request_ttl_seconds": 2**70}},
    ),
]

NAMES = [
    Bad("a model name with a space", "POST", M, 422, "name", "pattern", json={"name": "bad name"}),
    Bad(
        "a model name starting with a dash",
        "POST",
        M,
        422,
        "name",
        "pattern",
        json={"name": "-churn"},
    ),
    Bad("an empty model name", "POST", M, 422, "name", "required", json={"name": ""}),
    Bad(
        "a model name of 257 characters", "POST", M, 422, "name", "length", json={"name": "n" * 257}
    ),
    Bad("a non-ASCII model name", "POST", M, 422, "name", "pattern", json={"name": "chürn"}),
    Bad(
        "a rename to an invalid name",
        "POST",
        f"{M}/churn/rename",
        422,
        "new_name",
        "pattern",
        json={"new_name": "a/b"},
    ),
    Bad(
        "an upper-case alias",
        "PUT",
        f"{M}/churn/aliases/Champion",
        422,
        "alias",
        "pattern",
        json={"version": 1},
    ),
    Bad(
        "the reserved alias latest",
        "PUT",
        f"{M}/churn/aliases/latest",
        422,
        "alias",
        "reserved",
        json={"version": 1},
    ),
    Bad(
        "a reserved alias v2",
        "PUT",
        f"{M}/churn/aliases/v2",
        422,
        "alias",
        "reserved",
        json={"version": 1},
    ),
    Bad(
        "an invalid alias in a promotion request",
        "POST",
        f"{M}/churn/promotions",
        422,
        "alias",
        "pattern",
        json={"version": 1, "alias": "Champ ion", "justification": "why not"},
    ),
    Bad(
        "a tag key with a space (path)",
        "PUT",
        f"{M}/churn/tags/bad%20key",
        422,
        "tags.bad key",
        "pattern",
        json={"value": "x"},
    ),
    Bad(
        "a tag key with a space (body)",
        "POST",
        M,
        422,
        "tags.bad key",
        "pattern",
        json={"name": "x", "tags": {"bad key": "v"}},
    ),
    Bad(
        "a version tag key with a space",
        "PUT",
        f"{V}/1/tags/bad%20key",
        422,
        "tags.bad key",
        "pattern",
        json={"value": "x"},
    ),
    Bad(
        "a tag value over 5000 characters",
        "POST",
        M,
        422,
        "tags.team",
        "length",
        json={"name": "x", "tags": {"team": "t" * 5001}},
    ),
    Bad(
        "101 tags",
        "POST",
        M,
        422,
        "tags",
        "too_many",
        json={"name": "x", "tags": {f"k{i}": "v" for i in range(101)}},
    ),
    Bad(
        "a parameter key with a space",
        "POST",
        V,
        422,
        "content.parameters.bad key",
        "pattern",
        json={"artifacts": [ART], "params": {"bad key": 1}},
    ),
    Bad(
        "a token principal with a space",
        "POST",
        "/api/v1/tokens",
        422,
        "principal",
        "pattern",
        json={"principal": "bad principal", "roles": ["reader"]},
    ),
    Bad(
        "a token scope with a ?",
        "POST",
        "/api/v1/tokens",
        422,
        "scopes[0]",
        "pattern",
        json={"principal": "eve", "roles": ["reader"], "scopes": ["ch?rn"]},
    ),
    Bad(
        "a deployment environment with a space",
        "POST",
        f"{V}/1/deployments",
        422,
        "environment",
        "pattern",
        json={"environment": "prod eu", "target": "k8s"},
    ),
    Bad(
        "a deployment id with a !",
        "POST",
        f"{V}/1/deployments",
        422,
        "deployment_id",
        "pattern",
        json={"environment": "prod", "target": "k8s", "deployment_id": "d-1!"},
    ),
    Bad("a token id with a space", "DELETE", "/api/v1/tokens/bad%20id", 422, "token_id", "pattern"),
    Bad(
        "a NUL in a description",
        "PATCH",
        f"{M}/churn",
        422,
        "description",
        "nul_character",
        json={"description": "a\x00b"},
    ),
    Bad(
        "a NUL in a new model's description",
        "POST",
        M,
        422,
        "description",
        "nul_character",
        json={"name": "x", "description": "\x00"},
    ),
    Bad(
        "a NUL in a tag value",
        "PUT",
        f"{M}/churn/tags/team",
        422,
        "value",
        "nul_character",
        json={"value": "risk\x00"},
    ),
    Bad(
        "a NUL in a nested tag value",
        "POST",
        M,
        422,
        "tags.team",
        "nul_character",
        json={"name": "x", "tags": {"team": "\x00"}},
    ),
    Bad(
        "a NUL in a parameter value",
        "POST",
        V,
        422,
        "params.lr",
        "nul_character",
        json={"artifacts": [ART], "params": {"lr": "\x00"}},
    ),
    Bad(
        "a NUL in an artifact path",
        "POST",
        V,
        422,
        "artifacts[0].path",
        "nul_character",
        json={"artifacts": [{**ART, "path": "a\x00"}]},
    ),
    Bad("a NUL in a model name (path)", "GET", f"{M}/churn%00", 422, "name", "nul_character"),
    Bad("a NUL in a search (query)", "GET", f"{M}?q=%00", 422, "q", "nul_character"),
    Bad(
        "a NUL in a promotion request id",
        "GET",
        "/api/v1/promotions/%00",
        422,
        "request_id",
        "nul_character",
    ),
    Bad("a NUL in an actor", "GET", "/api/v1/audit/actors/a%00", 422, "actor", "nul_character"),
]

METRICS = [
    Bad(
        "1001 metrics in a batch",
        "POST",
        f"{V}/1/metrics",
        422,
        "metrics",
        "too_many",
        json=metrics(*[{"key": "auc", "value": 0.5, "step": i} for i in range(1001)]),
    ),
    Bad("an empty batch", "POST", f"{V}/1/metrics", 422, "metrics", "required", json=metrics()),
    Bad(
        "a NaN token (Python's json.dumps)",
        "POST",
        f"{V}/1/metrics",
        400,
        "body",
        "json",
        content=raw(json.dumps(metrics({"key": "auc", "value": float("nan")}))),
        headers=JSON,
    ),
    Bad(
        "an Infinity token",
        "POST",
        f"{V}/1/metrics",
        400,
        "body",
        "json",
        content=raw('{"metrics": [{"key": "auc", "value": Infinity}]}'),
        headers=JSON,
    ),
    Bad(
        "1e999 (infinite once parsed)",
        "POST",
        f"{V}/1/metrics",
        400,
        "body",
        "json",
        content=raw('{"metrics": [{"key": "auc", "value": 1e999}]}'),
        headers=JSON,
    ),
    Bad(
        "-1e999",
        "POST",
        f"{V}/1/metrics",
        400,
        "body",
        "json",
        content=raw('{"metrics": [{"key": "auc", "value": -1e999}]}'),
        headers=JSON,
    ),
    Bad(
        "the string NaN",
        "POST",
        f"{V}/1/metrics",
        422,
        "metrics[0].value",
        "finite",
        json=metrics({"key": "auc", "value": "NaN"}),
    ),
    Bad(
        "the string -Infinity",
        "POST",
        f"{V}/1/metrics",
        422,
        "metrics[1].value",
        "finite",
        json=metrics({"key": "auc", "value": 0.5}, {"key": "auc", "value": "-Infinity"}),
    ),
    Bad(
        "null (JavaScript's JSON.stringify(NaN))",
        "POST",
        f"{V}/1/metrics",
        400,
        "metrics[0].value",
        "type",
        json=metrics({"key": "auc", "value": None}),
    ),
    Bad(
        "a metric value that is a word",
        "POST",
        f"{V}/1/metrics",
        400,
        "metrics[0].value",
        "type",
        json=metrics({"key": "auc", "value": "high"}),
    ),
    Bad(
        "a metric without a value",
        "POST",
        f"{V}/1/metrics",
        400,
        "metrics[0].value",
        "required",
        json=metrics({"key": "auc"}),
    ),
    Bad(
        "a negative step",
        "POST",
        f"{V}/1/metrics",
        422,
        "metrics[0].step",
        "range",
        json=metrics({"key": "auc", "value": 1, "step": -1}),
    ),
    Bad(
        "a step over 2**63-1",
        "POST",
        f"{V}/1/metrics",
        422,
        "metrics[0].step",
        "range",
        json=metrics({"key": "auc", "value": 1, "step": 2**63}),
    ),
    Bad(
        "a timestamp without a zone",
        "POST",
        f"{V}/1/metrics",
        400,
        "metrics[0].timestamp",
        "type",
        json=metrics({"key": "auc", "value": 1, "timestamp": "2026-01-01T00:00:00"}),
    ),
    Bad(
        "a metric key with a space",
        "POST",
        f"{V}/1/metrics",
        422,
        "metrics[0].key",
        "pattern",
        json=metrics({"key": "a u c", "value": 1}),
    ),
    Bad(
        "a NUL in a metric key",
        "POST",
        f"{V}/1/metrics",
        422,
        "metrics[0].key",
        "nul_character",
        json=metrics({"key": "auc\x00", "value": 1}),
    ),
    Bad(
        "metrics of a version number too large for any column",
        "POST",
        f"{V}/2147483648/metrics",
        400,
        "version",
        "range",
        json=metrics({"key": "auc", "value": 1}),
    ),
    Bad(
        "a gate threshold of NaN",
        "PUT",
        "/api/v1/policy",
        422,
        "policy.transitions[0].gates[0].threshold",
        "finite",
        json={
            "policy": {
                "transitions": [
                    {
                        "from_stage": "staging",
                        "to_stage": "production",
                        "gates": [{"metric": "auc", "threshold": "NaN"}],
                    }
                ]
            }
        },
    ),
    Bad(
        "an unknown gate operator",
        "PUT",
        "/api/v1/policy",
        400,
        "policy.transitions[0].gates[0].op",
        "enum",
        json={
            "policy": {
                "transitions": [
                    {
                        "from_stage": "staging",
                        "to_stage": "production",
                        "gates": [{"metric": "auc", "op": "==", "threshold": 0.9}],
                    }
                ]
            }
        },
    ),
]

STAGES = [
    # Stage names are the policy's (custom stages): a name it does not define is a 422
    # naming the rule, a malformed one a 422 "pattern".
    Bad(
        "an unknown stage",
        "POST",
        f"{V}/1/stage",
        422,
        "to",
        "undefined_stage",
        json={"to": "prod"},
    ),
    Bad(
        "a stage in the wrong case",
        "POST",
        f"{V}/1/stage",
        422,
        "to",
        "pattern",
        json={"to": "Production"},
    ),
    Bad("no stage", "POST", f"{V}/1/stage", 400, "to", "required", json={"comment": "somewhere"}),
    Bad(
        "an unknown target stage in a request",
        "POST",
        f"{M}/churn/promotions",
        422,
        "target_stage",
        "undefined_stage",
        json={"version": 1, "target_stage": "live", "justification": "go"},
    ),
    Bad(
        "a request with neither stage nor alias",
        "POST",
        f"{M}/churn/promotions",
        422,
        "target_stage",
        "required",
        json={"version": 1, "justification": "go"},
    ),
    Bad(
        "a request without a justification",
        "POST",
        f"{M}/churn/promotions",
        422,
        "justification",
        "required",
        json={"version": 1, "target_stage": "staging", "justification": " "},
    ),
    Bad(
        "an unknown desired stage of a deployment",
        "POST",
        f"{V}/1/deployments",
        422,
        "desired_stage",
        "undefined_stage",
        json={"environment": "prod", "target": "k8s", "desired_stage": "live"},
    ),
    # A well-formed filter may name any model's custom stage (an empty page if none has it).
    Bad("a malformed stage filter", "GET", f"{M}?stage=Prod", 400, "stage", "pattern"),
    Bad("a malformed stage filter on versions", "GET", f"{V}?stage=li!ve", 400, "stage", "pattern"),
    Bad(
        "a malformed stage on the timeline",
        "GET",
        f"{M}/churn/timeline?stage=LIVE",
        400,
        "stage",
        "pattern",
    ),
    Bad("an unknown request state", "GET", "/api/v1/promotions?state=closed", 400, "state", "enum"),
    Bad(
        "a policy transition to an unknown stage",
        "PUT",
        "/api/v1/policy",
        422,
        "policy.transitions[0].to_stage",
        "undefined_stage",
        json={"policy": {"transitions": [{"from_stage": "staging", "to_stage": "live"}]}},
    ),
    Bad(
        "a promotion request for version 0",
        "POST",
        f"{M}/churn/promotions",
        404,
        "",
        "",
        json={"version": 0, "target_stage": "staging", "justification": "go"},
    ),
    Bad(
        "a version number too large for any column",
        "POST",
        f"{V}/2147483648/stage",
        400,
        "version",
        "range",
        json={"to": "staging"},
    ),
]

QUERIES = [
    Bad("a cursor that was never issued", "GET", f"{M}?cursor=garbage", 400, "cursor", "invalid"),
    Bad(
        "a cursor of versions that was never issued",
        "GET",
        f"{V}?cursor=Zm9v",
        400,
        "cursor",
        "invalid",
    ),
    Bad(
        "a metric history cursor that was never issued",
        "GET",
        f"{V}/1/metrics?key=auc&cursor=garbage",
        400,
        "cursor",
        "invalid",
    ),
    Bad(
        "an audit cursor that is a word",
        "GET",
        f"{M}/churn/history?cursor=last",
        400,
        "cursor",
        "type",
    ),
    Bad(
        "an audit cursor beyond any position",
        "GET",
        f"{M}/churn/history?cursor=9223372036854775808",
        400,
        "cursor",
        "range",
    ),
    Bad(
        "an actor cursor beyond any position",
        "GET",
        "/api/v1/audit/actors/admin?cursor=99999999999999999999",
        400,
        "cursor",
        "range",
    ),
    Bad(
        "a deployment page beyond any position",
        "GET",
        f"{M}/churn/deployments/runs?before_position=9223372036854775808",
        400,
        "before_position",
        "range",
    ),
    Bad(
        "a log page beyond any position",
        "GET",
        "/api/v1/events?after=9223372036854775808",
        400,
        "after",
        "range",
    ),
    Bad(
        "a history version too large",
        "GET",
        f"{M}/churn/history?version=2147483648",
        400,
        "version",
        "range",
    ),
    Bad("a version too large to exist", "GET", f"{V}/2147483648", 400, "version", "range"),
    Bad("an unknown order", "GET", f"{M}?order_by=colour", 400, "order_by", "invalid"),
    Bad("a malformed metric filter", "GET", f"{M}?metric=auc%3E%3E1", 400, "metric", "invalid"),
    Bad("a malformed tag filter", "GET", f"{V}?tag=%3Dx", 400, "tag", "invalid"),
    Bad("a limit of 0", "GET", f"{M}?limit=0", 400, "limit", "range"),
    Bad("a limit over the maximum", "GET", f"{M}?limit=501", 400, "limit", "range"),
    Bad("a limit that is a word", "GET", f"{M}?limit=ten", 400, "limit", "type"),
    Bad("a boolean that is not one", "GET", f"{M}?archived=perhaps", 400, "archived", "type"),
    Bad("as_of that is a word", "GET", f"{M}/churn?as_of=yesterday", 400, "as_of", "pattern"),
    Bad(
        "as_of without a zone",
        "GET",
        f"{M}/churn?as_of=2026-01-01T00:00:00",
        400,
        "as_of",
        "pattern",
    ),
    Bad("as_of in superscript digits", "GET", f"{M}/churn?as_of=%C2%B2", 400, "as_of", "pattern"),
    Bad(
        "as_of beyond any position",
        "GET",
        f"{M}/churn/history?as_of=99999999999999999999",
        400,
        "as_of",
        "range",
    ),
    Bad("at that is a word", "GET", f"{M}/churn/timeline?at=noon", 400, "at", "pattern"),
    Bad(
        "at beyond any position",
        "GET",
        f"{M}/churn/timeline?at=99999999999999999999",
        400,
        "at",
        "range",
    ),
    Bad(
        "since that is not a time", "GET", f"{M}/churn/history?since=monday", 400, "since", "format"
    ),
    Bad(
        "min_position beyond the head",
        "GET",
        f"{M}/churn?min_position=1000000",
        409,
        "min_position",
        "range",
    ),
    Bad(
        "min_position far beyond the head",
        "GET",
        f"{V}?min_position=99999999999999999999999",
        400,
        "min_position",
        "range",
    ),
    Bad("a negative min_position", "GET", f"{M}?min_position=-1", 400, "min_position", "range"),
    Bad(
        "a consistency nobody offers",
        "GET",
        M,
        400,
        "Modelreg-Consistency",
        "enum",
        headers={"Modelreg-Consistency": "eventual"},
    ),
    Bad(
        "versions to compare that are words",
        "GET",
        f"{M}/churn/compare?versions=a,b",
        400,
        "versions",
        "pattern",
    ),
    Bad(
        "no versions to compare",
        "GET",
        f"{M}/churn/compare?versions=,",
        400,
        "versions",
        "required",
    ),
    Bad("an unknown goal", "GET", f"{V}/1/metrics/auc/best?goal=most", 400, "goal", "enum"),
]

HEADERS = [
    Bad(
        "an If-Match that is no ETag",
        "PATCH",
        f"{M}/churn",
        400,
        "If-Match",
        "pattern",
        json={"description": "x"},
        headers={"If-Match": "yesterday"},
    ),
    Bad(
        "an If-Match in superscript digits",
        "PATCH",
        f"{M}/churn",
        400,
        "If-Match",
        "pattern",
        json={"description": "x"},
        headers={"If-Match": b'"\xb2"'},
    ),
    Bad(
        "a stale If-Match",
        "PATCH",
        f"{M}/churn",
        412,
        "",
        "",
        json={"description": "x"},
        headers={"If-Match": '"1"'},
    ),
    Bad(
        "an If-Match no stream can reach",
        "PATCH",
        f"{M}/churn",
        412,
        "",
        "",
        json={"description": "x"},
        headers={"If-Match": '"9223372036854775807"'},
    ),
    Bad(
        "an If-Match beyond any version",
        "PATCH",
        f"{M}/churn",
        400,
        "If-Match",
        "range",
        json={"description": "x"},
        headers={"If-Match": '"99999999999999999999999"'},
    ),
    Bad(
        "an Idempotency-Key with a space",
        "POST",
        M,
        422,
        "Idempotency-Key",
        "pattern",
        json={"name": "keyed"},
        headers={"Idempotency-Key": "my key"},
    ),
    Bad(
        "an Idempotency-Key of 201 characters",
        "POST",
        M,
        422,
        "Idempotency-Key",
        "pattern",
        json={"name": "keyed"},
        headers={"Idempotency-Key": "k" * 201},
    ),
]


def nested(depth: int) -> bytes:
    return b'{"name": "deep", "tags": ' + b"[" * depth + b"]" * depth + b"}"


FAR_FUTURE = "9999-12-31T23:59:59-14:00"  # year 10000 in UTC
FAR_PAST = "0001-01-01T00:00:00%2B14:00"  # year 0 in UTC
DIGITS = "9" * 5000  # beyond Python's int-from-text digit limit
BELOW_INT4 = -(2**31) - 1
PLAIN = {"content-type": "text/plain"}

HOSTILE = [
    Bad(
        "JSON nested 1,000 deep",
        "POST",
        M,
        400,
        "body",
        "depth",
        content=nested(1000),
        headers=JSON,
    ),
    Bad(
        "JSON nested 100,000 deep",
        "POST",
        M,
        400,
        "body",
        "depth",
        content=b"[" * 100_000 + b"]" * 100_000,
        headers=JSON,
    ),
    Bad(
        "JSON nested 1,000 deep in a token request",
        "POST",
        "/api/v1/tokens",
        400,
        "body",
        "depth",
        content=b'{"principal": "eve", "roles": ["reader"], "scopes": '
        + b"[" * 1000
        + b"]" * 1000
        + b"}",
        headers=JSON,
    ),
    Bad(
        "an If-Match of 5,000 digits",
        "PATCH",
        f"{M}/churn",
        400,
        "If-Match",
        "range",
        json={"description": "x"},
        headers={"If-Match": f'"{DIGITS}"'},
    ),
    Bad("as_of of 5,000 digits", "GET", f"{M}/churn?as_of={DIGITS}", 400, "as_of", "range"),
    Bad("at of 5,000 digits", "GET", f"{M}/churn/timeline?at={DIGITS}", 400, "at", "range"),
    Bad(
        "a cursor of 5,000 digits",
        "GET",
        f"{M}/churn/history?cursor={DIGITS}",
        400,
        "cursor",
        "range",
    ),
    Bad(
        "as_of past year 9999 in UTC", "GET", f"{M}/churn?as_of={FAR_FUTURE}", 400, "as_of", "range"
    ),
    Bad("as_of before year 1 in UTC", "GET", f"{M}/churn?as_of={FAR_PAST}", 400, "as_of", "range"),
    Bad(
        "a registry-wide as_of past year 9999",
        "GET",
        f"{M}?as_of={FAR_FUTURE}",
        400,
        "as_of",
        "range",
    ),
    Bad(
        "at past year 9999 in UTC",
        "GET",
        f"{M}/churn/timeline?at={FAR_FUTURE}",
        400,
        "at",
        "range",
    ),
    Bad(
        "since past year 9999 in UTC",
        "GET",
        f"{M}/churn/history?since={FAR_FUTURE}",
        400,
        "since",
        "range",
    ),
    Bad(
        "until before year 1 in UTC",
        "GET",
        f"{M}/churn/history?until={FAR_PAST}",
        400,
        "until",
        "range",
    ),
    Bad(
        "a metric timestamp past year 9999 in UTC",
        "POST",
        f"{V}/1/metrics",
        400,
        "metrics[0].timestamp",
        "range",
        json=metrics({"key": "auc", "value": 0.9, "timestamp": FAR_FUTURE}),
    ),
    Bad(
        "a token expiry past year 9999 in UTC",
        "POST",
        "/api/v1/tokens",
        400,
        "expires_at",
        "range",
        json={"principal": "eve", "roles": ["reader"], "expires_at": FAR_FUTURE},
    ),
    Bad(
        "a version below -2^31 (best metric)",
        "GET",
        f"{V}/{BELOW_INT4}/metrics/auc/best",
        400,
        "version",
        "range",
    ),
    Bad(
        "a version below -2^31 (history)",
        "GET",
        f"{M}/churn/history?version={BELOW_INT4}",
        400,
        "version",
        "range",
    ),
    Bad(
        "a version below -2^31 (compare)",
        "GET",
        f"{M}/churn/compare?versions=1,{BELOW_INT4}",
        400,
        "versions",
        "range",
    ),
    Bad(
        "a version above 2^31 (compare)",
        "GET",
        f"{M}/churn/compare?versions={2**31}",
        400,
        "versions",
        "range",
    ),
    Bad(
        "a text/plain body",
        "POST",
        M,
        415,
        "Content-Type",
        "media_type",
        content=raw('{"name": "plain"}'),
        headers=PLAIN,
    ),
    Bad(
        "a body without a Content-Type",
        "POST",
        M,
        415,
        "Content-Type",
        "media_type",
        content=raw('{"name": "untyped"}'),
    ),
    Bad(
        "duplicate keys (an admin minted by the second)",
        "POST",
        "/api/v1/tokens",
        400,
        "roles",
        "duplicate_key",
        content=raw('{"principal": "eve", "roles": ["reader"], "roles": ["admin"]}'),
        headers=JSON,
    ),
    Bad(
        "duplicate keys in a nested object",
        "POST",
        V,
        400,
        "artifacts[0].path",
        "duplicate_key",
        content=raw(
            '{"artifacts": [{"path": "a", "path": "b", "uri": "s3://m/a",'
            f' "sha256": "{"a" * 64}", "size": 1}}]}}'
        ),
        headers=JSON,
    ),
    *[
        Bad(
            f"an artifact path with {what}",
            "POST",
            V,
            422,
            "content.artifacts[0].path",
            "invisible_character",
            json={"artifacts": [{**ART, "path": f"model{char}.pkl"}]},
        )
        for what, char in [
            ("a line feed", "\n"),
            ("a tab", "\t"),
            ("BEL", "\x07"),
            ("DEL", "\x7f"),
            ("a C1 control", "\x85"),
            ("U+202E (right-to-left override)", "\u202e"),
            ("U+200B (zero width space)", "\u200b"),
            ("U+2028 (line separator)", "\u2028"),
            ("U+FEFF (byte order mark)", "\ufeff"),
        ]
    ],
]


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        created = await running.post(M, json={"name": "churn", "tags": {"team": "risk"}})
        assert created.status_code == 201, created.text
        version = await running.post(V, json={"artifacts": [ART]})
        assert version.status_code == 201, version.text
        yield running


async def log_state(api: Api) -> tuple[int, int]:
    row = await api.services.pool.fetchrow(
        "SELECT count(*) AS n, coalesce(max(seq), 0) AS last FROM events"
    )
    assert row is not None
    return row["n"], row["last"]


@pytest.mark.parametrize(
    "cases",
    [
        pytest.param(BODIES, id="bodies"),
        pytest.param(NAMES, id="names"),
        pytest.param(METRICS, id="metrics"),
        pytest.param(STAGES, id="stages"),
        pytest.param(QUERIES, id="queries"),
        pytest.param(HEADERS, id="headers"),
        pytest.param(HOSTILE, id="hostile"),
    ],
)
async def test_bad_input_is_refused_with_a_problem_naming_field_and_rule(
    api: Api, cases: list[Bad]
) -> None:
    failures = []
    before = await log_state(api)
    for case in cases:
        kwargs: dict[str, Any] = {"headers": dict(case.headers)}
        if case.json is not UNSET:
            kwargs["json"] = case.json
        if case.content is not None:
            kwargs["content"] = case.content
        response = await api.request(case.method, case.path, **kwargs)
        problem = (
            response.json()
            if response.headers.get("content-type") == "application/problem+json"
            else None
        )
        where = f"{case.what}: {case.method} {case.path[:80]} -> {response.status_code} {response.text[:300]}"
        if problem is None:
            failures.append(f"not problem+json: {where}")
        elif (response.status_code, problem.get("field") or "", problem.get("rule") or "") != (
            case.status,
            case.field,
            case.rule,
        ):
            failures.append(f"expected {case.status} {case.field!r} {case.rule!r}: {where}")
        elif (
            problem["status"] != case.status
            or not problem.get("detail")
            or not problem["type"].startswith("urn:modelreg:")
        ):
            failures.append(f"incomplete problem: {where}")
        after = await log_state(api)
        if after != before:
            failures.append(f"the log changed ({before} -> {after}): {where}")
            before = after
    assert not failures, "\n".join(failures)
    # Nothing poisoned the views: they still reach the head.
    head = await head_position(api.services.pool)
    assert (await api.get(f"{M}/churn?min_position={head}")).status_code == 200


async def test_errors_list_every_field_problem(api: Api) -> None:
    # A body with several problems: the first is at the top, all are under "errors".
    response = await api.post(V, json={"artifacts": [{"path": 1}]})
    assert response.status_code == 400
    problem = response.json()
    assert problem["errors"], problem
    assert all({"field", "rule", "message"} <= set(e) for e in problem["errors"])
    assert (problem["field"], problem["rule"]) == (
        problem["errors"][0]["field"],
        problem["errors"][0]["rule"],
    )


async def test_the_limits_are_where_they_say(api: Api) -> None:
    # 1000 metrics pass, 1001 do not (above); a body of exactly 8 MiB passes, one byte more does not.
    batch = await api.post(
        f"{V}/1/metrics",
        json=metrics(*[{"key": "loss", "value": 1 / (i + 1), "step": i} for i in range(1000)]),
    )
    assert batch.status_code == 201, batch.text
    body = json.dumps({"name": "padded"}).encode()
    exact = await api.post(M, content=body + b" " * (MAX_BODY - len(body)), headers=JSON)
    assert exact.status_code == 201, exact.text
    before = await log_state(api)
    over = await api.post(
        M,
        content=body.replace(b"padded", b"padded-2") + b" " * (MAX_BODY - len(body)),
        headers=JSON,
    )
    assert (over.status_code, over.json()["field"], over.json()["rule"]) == (413, "body", "length")
    assert await log_state(api) == before
    # A 10,000-file manifest (about 1.6 MiB) is a normal version.
    artifacts = [
        {
            "path": f"shard-{i:05}.bin",
            "external": True,
            "uri": f"s3://models/churn/2/shard-{i:05}.bin",
            "sha256": f"{i:064x}",
            "size": i,
        }
        for i in range(10_000)
    ]
    registered = await api.post(V, json={"artifacts": artifacts})
    assert registered.status_code == 201, registered.text
    read = await api.get(f"{V}/2?min_position={registered.headers['Modelreg-Position']}")
    assert read.status_code == 200, read.text


async def test_json_nesting_is_refused_just_past_64_levels(api: Api) -> None:
    # Given bodies nested 64 and 65 levels deep (the object itself is level 1),
    at_limit = await api.post(M, content=nested(63), headers=JSON)
    past_limit = await api.post(M, content=nested(64), headers=JSON)
    # then only the deeper one is refused for its depth; the other reaches the decoder,
    # which finds tags is no map of strings.
    assert (at_limit.status_code, at_limit.json()["rule"]) == (400, "type"), at_limit.text
    assert (past_limit.status_code, past_limit.json()["rule"]) == (400, "depth"), past_limit.text


async def test_a_json_media_type_with_parameters_or_a_suffix_is_json(api: Api) -> None:
    # Given a JSON body declared with a charset, and one declared as application/x+json,
    for content_type, name in [
        ("application/json; charset=utf-8", "with-charset"),
        ("application/merge-patch+json", "with-suffix"),
    ]:
        # when a model is registered with it, then it is accepted as JSON.
        created = await api.post(
            M, content=json.dumps({"name": name}).encode(), headers={"content-type": content_type}
        )
        assert created.status_code == 201, created.text
