"""The authorisation matrix: every route of the app x every kind of caller.

The routes come from the app itself, so a route added later without a row in ``MATRIX``
fails ``test_every_route_has_a_row_in_the_matrix``. Each row names the permission the route
needs (``None``: any valid token) and a realistic request (an existing model, version,
alias, promotion request, deployment, token), so "allowed" means the handler ran: the
first allowed caller must get a 2xx (and a write that recorded something, its
Modelreg-Position and ETag), every allowed caller anything but 401/403/5xx, every denied
caller a 401 (no usable token) or a 403 naming the missing permission, and a denied
request records nothing.
"""

from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import pytest
from litestar import Litestar

from eventlog.freshness import wait_for_position
from eventlog.log import head_position
from events.access import ROLE_PERMISSIONS, Permission, Role
from projections.registry_state import all_projections
from service.api.app import api_and_ui_app_kwargs
from service.api.router import api_app_kwargs
from service.commands.tokens import issue_token, revoke_token
from tests.support.api import Api, running_api
from tests.support.database import Database
from tests.support.policies import PERMISSIVE_POLICY_BODY

R, W, A, ADMIN = Permission.READ, Permission.WRITE, Permission.APPROVE, Permission.ADMIN

# What the contributor scoped to another model gets where its role has the permission:
# "deny" (403 naming the permission and the model), "allow" (a registry-wide read,
# filtered to its scope), "hide" (404: what is out of scope does not exist for it), or a
# Permission (403 naming that one: e.g. the whole log needs admin from a scoped token).
Scoped = Literal["deny", "allow", "hide"] | Permission
Body = dict[str, Any] | Callable[[str], dict[str, Any]] | None


@dataclass(frozen=True)
class Row:
    path: str
    permission: Permission | None
    body: Body = None
    scoped: Scoped = "deny"
    headers: dict[str, str] | None = None
    answers: int | None = None  # the status every allowed caller gets, if not a 2xx


def artifact(n: int) -> dict[str, Any]:
    return {
        "path": "model.pkl",
        "external": True,
        "uri": f"s3://models/{n}/model.pkl",
        "sha256": f"{n:064x}",
        "size": 100 + n,
    }


# Governance is not what this file tests: production moves freely, the champion alias does not.
POLICY = {
    "policy": {
        **PERMISSIVE_POLICY_BODY,
        "protected_aliases": [{"alias": "champion", "approvals": 1}],
    },
    "comment": "the champion alias needs an approval",
}
CHAMPION = {"version": 1, "alias": "champion", "justification": "best so far"}

M = "/api/v1/models"
MF = "/api/2.0/mlflow"  # MLflow's routes answer MLflow's error envelope, not problem+json
V = f"{M}/churn/versions"
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256 of no bytes
MA = f"{MF}-artifacts/artifacts"  # MLflow's artifact proxy: MLflow's envelope too
V5 = "modelreg/models/churn/versions/5"

# (method, path template) -> a concrete request and what it needs. Ordered: rows run top
# to bottom, each for every caller, on one registry (archive before restore).
MATRIX: dict[tuple[str, str], Row] = {
    # models
    ("POST", "/api/v1/models"): Row(M, W, lambda who: {"name": f"made-by-{who}"}),
    ("GET", "/api/v1/models"): Row(M, R, scoped="allow"),
    ("GET", "/api/v1/models/{name}"): Row(f"{M}/churn", R),
    ("PATCH", "/api/v1/models/{name}"): Row(f"{M}/churn", W, {"description": "who leaves"}),
    ("POST", "/api/v1/models/{name}/rename"): Row(
        f"{M}/renamable/rename", W, lambda who: {"new_name": f"renamed-by-{who}"}
    ),
    ("POST", "/api/v1/models/{name}/archive"): Row(
        f"{M}/retired/archive", ADMIN, {"reason": "unused"}
    ),
    ("POST", "/api/v1/models/{name}/delete"): Row(
        f"{M}/doomed/delete", ADMIN, {"reason": "created by mistake"}
    ),
    ("POST", "/api/v1/models/{name}/restore"): Row(
        f"{M}/retired/restore", ADMIN, {"reason": "needed again"}
    ),
    ("PUT", "/api/v1/models/{name}/tags/{key}"): Row(f"{M}/churn/tags/env", W, {"value": "prod"}),
    ("DELETE", "/api/v1/models/{name}/tags/{key}"): Row(f"{M}/churn/tags/team", W),
    # versions
    ("POST", "/api/v1/models/{name}/versions"): Row(V, W, {"artifacts": [artifact(9)]}),
    ("GET", "/api/v1/models/{name}/versions"): Row(V, R),
    ("GET", "/api/v1/models/{name}/versions/{version}"): Row(f"{V}/1", R),
    ("GET", "/api/v1/models/{name}/versions/by-alias/{alias}"): Row(f"{V}/by-alias/candidate", R),
    ("PATCH", "/api/v1/models/{name}/versions/{version}"): Row(
        f"{V}/1", W, {"description": "the first"}
    ),
    ("PUT", "/api/v1/models/{name}/versions/{version}/tags/{key}"): Row(
        f"{V}/1/tags/env", W, {"value": "prod"}
    ),
    ("DELETE", "/api/v1/models/{name}/versions/{version}/tags/{key}"): Row(f"{V}/1/tags/team", W),
    ("POST", "/api/v1/models/{name}/versions/{version}/deprecate"): Row(
        f"{V}/3/deprecate", W, {"reason": "leaky"}
    ),
    ("POST", "/api/v1/models/{name}/versions/{version}/metrics"): Row(
        f"{V}/1/metrics", W, {"metrics": [{"key": "loss", "value": 0.1}]}
    ),
    ("GET", "/api/v1/models/{name}/versions/{version}/metrics"): Row(f"{V}/1/metrics?key=auc", R),
    ("GET", "/api/v1/models/{name}/versions/{version}/metrics/series"): Row(
        f"{V}/1/metrics/series", R
    ),
    ("GET", "/api/v1/models/{name}/versions/{version}/metrics/histories"): Row(
        f"{V}/1/metrics/histories?limit=10", R
    ),
    ("GET", "/api/v1/models/{name}/versions/{version}/metrics/{key}/best"): Row(
        f"{V}/1/metrics/auc/best?dataset=holdout", R
    ),
    ("GET", "/api/v1/models/{name}/compare"): Row(f"{M}/churn/compare?versions=1,2", R),
    # artifacts (a request without a body uploads the empty blob)
    ("PUT", "/api/v1/models/{name}/blobs/{digest}"): Row(f"{M}/churn/blobs/sha256:{EMPTY}", W),
    ("GET", "/api/v1/models/{name}/versions/{ref}/files/{file_path}"): Row(
        f"{V}/5/files/empty.bin", R
    ),
    ("GET", "/api/v1/models/{name}/versions/{ref}/archive"): Row(f"{V}/5/archive?format=zip", R),
    ("GET", "/api/v1/models/{name}/versions/{ref}/links/{file_path}"): Row(
        f"{V}/5/links/empty.bin", R
    ),
    # upload sessions (of the empty blob: a chunk of no bytes at offset 0 appends nothing)
    ("POST", "/api/v1/models/{name}/uploads"): Row(
        f"{M}/churn/uploads", W, {"digest": f"sha256:{EMPTY}", "size": 0}
    ),
    ("GET", "/api/v1/models/{name}/uploads/{upload_id}"): Row(f"{M}/churn/uploads/{{upload}}", W),
    ("PATCH", "/api/v1/models/{name}/uploads/{upload_id}"): Row(
        f"{M}/churn/uploads/{{upload}}", W, headers={"Content-Range": "bytes 0-0/0"}
    ),
    ("PUT", "/api/v1/models/{name}/uploads/{upload_id}"): Row(f"{M}/churn/uploads/{{upload}}", W),
    ("DELETE", "/api/v1/models/{name}/uploads/{upload_id}"): Row(
        f"{M}/churn/uploads/{{abandoned}}", W
    ),
    # lifecycle
    ("POST", "/api/v1/models/{name}/versions/{version}/stage"): Row(
        f"{V}/4/stage", W, {"to": "staging"}
    ),
    # churn v2 is live, so every caller allowed to restore gets 409 "not archived"
    ("POST", "/api/v1/models/{name}/versions/{version}/restore"): Row(
        f"{V}/2/restore", ADMIN, {"reason": "back"}, answers=409
    ),
    ("POST", "/api/v1/models/{name}/rollback"): Row(
        f"{M}/rollbacker/rollback", W, {"reason": "v2 misbehaves"}
    ),
    ("PUT", "/api/v1/models/{name}/aliases/{alias}"): Row(
        f"{M}/churn/aliases/next", W, {"version": 2}
    ),
    ("DELETE", "/api/v1/models/{name}/aliases/{alias}"): Row(f"{M}/churn/aliases/old", W),
    ("GET", "/api/v1/models/{name}/aliases/{alias}"): Row(f"{M}/churn/aliases/candidate", R),
    ("GET", "/api/v1/models/{name}/timeline"): Row(f"{M}/churn/timeline", R),
    ("PUT", "/api/v1/models/{name}/policy"): Row(f"{M}/churn/policy", ADMIN, POLICY),
    ("GET", "/api/v1/models/{name}/policy"): Row(f"{M}/churn/policy", R),
    ("DELETE", "/api/v1/models/{name}/policy"): Row(f"{M}/churn/policy", ADMIN),
    ("GET", "/api/v1/models/{name}/promotions"): Row(f"{M}/churn/promotions", R),
    ("POST", "/api/v1/models/{name}/promotions"): Row(f"{M}/churn/promotions", W, CHAMPION),
    # promotion requests ({to_approve} etc. are filled in from the setup)
    ("GET", "/api/v1/promotions"): Row("/api/v1/promotions", R, scoped="allow"),
    ("GET", "/api/v1/promotions/{request_id}"): Row(
        "/api/v1/promotions/{to_read}", R, scoped="hide"
    ),
    ("POST", "/api/v1/promotions/{request_id}/approve"): Row(
        "/api/v1/promotions/{to_approve}/approve", A, {"comment": "ok"}
    ),
    ("POST", "/api/v1/promotions/{request_id}/reject"): Row(
        "/api/v1/promotions/{to_reject}/reject", A, {"comment": "no"}
    ),
    ("POST", "/api/v1/promotions/{request_id}/cancel"): Row(
        "/api/v1/promotions/{to_cancel}/cancel", W, {"comment": "never mind"}
    ),
    ("GET", "/api/v1/policy"): Row("/api/v1/policy", R, scoped="allow"),
    ("PUT", "/api/v1/policy"): Row("/api/v1/policy", ADMIN, POLICY),
    # deployments
    ("POST", "/api/v1/models/{name}/versions/{version}/deployments"): Row(
        f"{V}/1/deployments", W, {"environment": "prod", "target": "k8s"}
    ),
    ("POST", "/api/v1/models/{name}/deployments/report"): Row(
        f"{M}/churn/deployments/report", W, {"deployment_id": "dep-1", "status": "succeeded"}
    ),
    ("GET", "/api/v1/models/{name}/deployments"): Row(f"{M}/churn/deployments", R),
    ("GET", "/api/v1/models/{name}/deployments/runs"): Row(f"{M}/churn/deployments/runs", R),
    # audit
    ("GET", "/api/v1/models/{name}/history"): Row(f"{M}/churn/history", R),
    ("GET", "/api/v1/audit/actors/{actor}"): Row("/api/v1/audit/actors/carol", R, scoped="allow"),
    ("GET", "/api/v1/events"): Row("/api/v1/events", R, scoped=ADMIN),
    ("GET", "/api/v1/events/schema"): Row("/api/v1/events/schema", R, scoped="allow"),
    ("GET", "/api/v1/audit/verify"): Row("/api/v1/audit/verify", R, scoped="allow"),
    ("GET", "/api/v1/audit/artifacts"): Row("/api/v1/audit/artifacts", ADMIN),
    ("GET", "/api/v1/audit/denials"): Row("/api/v1/audit/denials", ADMIN),
    # tokens, identity, operations
    ("POST", "/api/v1/tokens"): Row(
        "/api/v1/tokens", ADMIN, {"principal": "eve", "roles": ["reader"]}
    ),
    ("GET", "/api/v1/tokens"): Row("/api/v1/tokens", ADMIN),
    # custom roles, grants, service accounts: the map of who may do what, admin only
    ("GET", "/api/v1/access/roles"): Row("/api/v1/access/roles", ADMIN),
    ("PUT", "/api/v1/access/roles/{role}"): Row(
        "/api/v1/access/roles/auditor", ADMIN, {"permissions": ["read"]}
    ),
    ("DELETE", "/api/v1/access/roles/{role}"): Row("/api/v1/access/roles/doomed-role", ADMIN),
    ("GET", "/api/v1/access/grants"): Row("/api/v1/access/grants?as_of=1", ADMIN),
    ("POST", "/api/v1/access/grants"): Row(
        "/api/v1/access/grants", ADMIN, {"principal": "eve", "role": "reader", "model": "churn"}
    ),
    ("DELETE", "/api/v1/access/grants/{grant_id}"): Row("/api/v1/access/grants/{grant}", ADMIN),
    ("GET", "/api/v1/access/check"): Row(
        "/api/v1/access/check?principal=carol&permission=write&model=churn", ADMIN
    ),
    ("GET", "/api/v1/service-accounts"): Row("/api/v1/service-accounts", ADMIN),
    ("POST", "/api/v1/service-accounts"): Row(
        "/api/v1/service-accounts", ADMIN, lambda who: {"name": f"sa-{who}", "roles": ["reader"]}
    ),
    ("POST", "/api/v1/service-accounts/{name}/disable"): Row(
        "/api/v1/service-accounts/sa-doomed/disable", ADMIN
    ),
    ("DELETE", "/api/v1/tokens/{token_id}"): Row("/api/v1/tokens/{throwaway}", ADMIN),
    ("GET", "/api/v1/models/{name}/versions/{version}/gate"): Row(f"{V}/2/gate?to=staging", R),
    # webhooks: managed with write over every model they deliver; others' are hidden
    ("POST", "/api/v1/webhooks"): Row(
        "/api/v1/webhooks", W, {"url": "https://hooks.example.invalid/x", "models": ["churn"]}
    ),
    ("GET", "/api/v1/webhooks"): Row("/api/v1/webhooks", W, scoped="allow"),
    ("GET", "/api/v1/webhooks/{subscription_id}"): Row("/api/v1/webhooks/{hook}", W, scoped="hide"),
    ("GET", "/api/v1/webhooks/{subscription_id}/deliveries"): Row(
        "/api/v1/webhooks/{hook}/deliveries", W, scoped="hide"
    ),
    ("GET", "/api/v1/webhooks/{subscription_id}/deliveries/{position}"): Row(
        "/api/v1/webhooks/{hook}/deliveries/1", W, scoped="hide"
    ),
    ("POST", "/api/v1/webhooks/{subscription_id}/deliveries/{position}/redeliver"): Row(
        "/api/v1/webhooks/{hook}/deliveries/1/redeliver", W, scoped="hide"
    ),
    ("DELETE", "/api/v1/webhooks/{subscription_id}"): Row(
        "/api/v1/webhooks/{hook}", W, scoped="hide"
    ),
    ("GET", "/api/v1/me"): Row("/api/v1/me", None, scoped="allow"),
    # subjects: any reader may ask who an id stands for (answers name people anyway)
    ("GET", "/api/v1/subjects/{subject}"): Row("/api/v1/subjects/carol", R, scoped="allow"),
    ("POST", "/api/v1/subjects/{subject}/erase"): Row(
        "/api/v1/subjects/{erasable}/erase", ADMIN, {"reason": "asked to be forgotten"}
    ),
    ("GET", "/metrics"): Row("/metrics", R, scoped="allow"),
    # MLflow's registry API: the same permissions as the /api/v1 routes doing the same
    ("POST", f"{MF}/registered-models/create"): Row(
        f"{MF}/registered-models/create", W, lambda who: {"name": f"mlflow-by-{who}"}
    ),
    ("GET", f"{MF}/registered-models/get"): Row(f"{MF}/registered-models/get?name=churn", R),
    ("POST", f"{MF}/registered-models/rename"): Row(
        f"{MF}/registered-models/rename",
        W,
        lambda who: {"name": "renamed-by-contributor", "new_name": f"mlflow-renamed-by-{who}"},
    ),
    ("PATCH", f"{MF}/registered-models/update"): Row(
        f"{MF}/registered-models/update", W, {"name": "churn", "description": "via MLflow"}
    ),
    ("DELETE", f"{MF}/registered-models/delete"): Row(
        f"{MF}/registered-models/delete", ADMIN, {"name": "retired"}
    ),
    ("GET", f"{MF}/registered-models/search"): Row(
        f"{MF}/registered-models/search", R, scoped="allow"
    ),
    ("POST", f"{MF}/registered-models/set-tag"): Row(
        f"{MF}/registered-models/set-tag", W, {"name": "churn", "key": "via", "value": "mlflow"}
    ),
    ("DELETE", f"{MF}/registered-models/delete-tag"): Row(
        f"{MF}/registered-models/delete-tag", W, {"name": "churn", "key": "via"}
    ),
    ("POST", f"{MF}/registered-models/alias"): Row(
        f"{MF}/registered-models/alias", W, {"name": "churn", "alias": "mlflow", "version": "2"}
    ),
    ("DELETE", f"{MF}/registered-models/alias"): Row(
        f"{MF}/registered-models/alias", W, {"name": "churn", "alias": "mlflow"}
    ),
    ("GET", f"{MF}/registered-models/alias"): Row(
        f"{MF}/registered-models/alias?name=churn&alias=candidate", R
    ),
    ("POST", f"{MF}/registered-models/get-latest-versions"): Row(
        f"{MF}/registered-models/get-latest-versions", R, {"name": "churn"}
    ),
    ("GET", f"{MF}/registered-models/get-latest-versions"): Row(
        f"{MF}/registered-models/get-latest-versions?name=churn", R
    ),
    ("POST", f"{MF}/model-versions/create"): Row(
        f"{MF}/model-versions/create", W, {"name": "churn", "source": "s3://models/mlflow"}
    ),
    ("GET", f"{MF}/model-versions/get"): Row(f"{MF}/model-versions/get?name=churn&version=1", R),
    ("PATCH", f"{MF}/model-versions/update"): Row(
        f"{MF}/model-versions/update", W, {"name": "churn", "version": "1", "description": "x"}
    ),
    ("DELETE", f"{MF}/model-versions/delete"): Row(
        f"{MF}/model-versions/delete", W, {"name": "churn", "version": "4"}
    ),
    ("GET", f"{MF}/model-versions/search"): Row(f"{MF}/model-versions/search", R, scoped="allow"),
    ("POST", f"{MF}/model-versions/set-tag"): Row(
        f"{MF}/model-versions/set-tag",
        W,
        {"name": "churn", "version": "1", "key": "k", "value": "v"},
    ),
    ("DELETE", f"{MF}/model-versions/delete-tag"): Row(
        f"{MF}/model-versions/delete-tag", W, {"name": "churn", "version": "1", "key": "k"}
    ),
    ("POST", f"{MF}/model-versions/transition-stage"): Row(
        f"{MF}/model-versions/transition-stage",
        W,
        {"name": "churn", "version": "2", "stage": "Staging"},
    ),
    ("GET", f"{MF}/model-versions/get-download-uri"): Row(
        f"{MF}/model-versions/get-download-uri?name=churn&version=1", R
    ),
    # MLflow's artifact proxy (its error envelope; writes refused to every caller)
    ("GET", "/api/2.0/mlflow-artifacts/artifacts"): Row(f"{MA}?path={V5}", R),
    ("GET", "/api/2.0/mlflow-artifacts/artifacts/{artifact_path}"): Row(f"{MA}/{V5}/empty.bin", R),
    ("PUT", "/api/2.0/mlflow-artifacts/artifacts/{artifact_path}"): Row(
        f"{MA}/{V5}/new.bin", None, scoped="allow", answers=405
    ),
    ("DELETE", "/api/2.0/mlflow-artifacts/artifacts/{artifact_path}"): Row(
        f"{MA}/{V5}/empty.bin", None, scoped="allow", answers=405
    ),
    ("POST", "/api/2.0/mlflow-artifacts/mpu/{action}"): Row(
        f"/api/2.0/mlflow-artifacts/mpu/create/{V5}/big.bin", None, scoped="allow", answers=405
    ),
}

# Served without a token: the OpenAPI document, its viewers and their assets (health lives
# in service.api.app).
PUBLIC: dict[tuple[str, str], str] = {
    ("GET", "/schema"): "/schema",
    ("GET", "/schema/openapi.json"): "/schema/openapi.json",
    ("GET", "/schema/openapi.yaml"): "/schema/openapi.yaml",
    ("GET", "/schema/openapi.yml"): "/schema/openapi.yml",
    ("GET", "/schema/swagger"): "/schema/swagger",
    ("GET", "/schema/redoc"): "/schema/redoc",
    ("GET", "/schema/oauth2-redirect.html"): "/schema/oauth2-redirect.html",
    ("GET", "/schema/{path}"): "/schema/no-such-page",
    ("GET", "/schema/static/{file_path}"): "/schema/static/redoc/redoc.standalone.js",
    # How `modelreg login` signs in (asked before it holds a token; nothing secret in it).
    ("GET", "/api/v1/auth/config"): "/api/v1/auth/config",
}


@dataclass(frozen=True)
class Caller:
    label: str
    header: str | None  # the Authorization header; None sends none
    role: Role | None = None  # None: no usable token (401 expected)
    scoped: bool = False


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db) as running:
        yield running


def app_routes(api: Api) -> set[tuple[str, str]]:
    app = Litestar(**api_app_kwargs(api.services))
    return {
        (method, route.path_format)
        for route in app.routes
        for method in getattr(route, "methods", ())
        if method not in {"HEAD", "OPTIONS"}
    }


async def test_every_route_has_a_row_in_the_matrix(api: Api) -> None:
    routes = app_routes(api)
    missing = sorted(routes - MATRIX.keys() - PUBLIC.keys())
    assert not missing, f"routes without an authorisation row in MATRIX (add one): {missing}"
    stale = sorted((MATRIX.keys() | PUBLIC.keys()) - routes)
    assert not stale, f"rows for routes the app no longer has: {stale}"


async def test_only_the_schema_and_health_are_open(api: Api) -> None:
    for (method, _), path in PUBLIC.items():
        response = await api.client.request(method, path)
        assert response.status_code not in {401, 403} and response.status_code < 500, (
            path,
            response.status_code,
        )
    document = (await api.client.get("/schema/openapi.json")).json()
    assert "/api/v1/models" in document["paths"]
    # The health endpoints (service.api.app) are open too: tests/integration/test_cli_serve.py.


async def _ok(response: httpx.Response, status: int | None = None) -> httpx.Response:
    good = response.status_code == status if status else 200 <= response.status_code < 300
    assert good, (
        f"setup: {response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
    )
    return response


async def _setup(api: Api) -> tuple[list[Caller], dict[str, str]]:
    """The registry every row acts on; returns the callers and the ids to fill into paths."""
    now = datetime.now(UTC)
    carol = await api.token("carol", Role.CONTRIBUTOR)
    callers = [
        Caller("no token", None),
        Caller("basic auth", "Basic YWRtaW46YWRtaW4="),
        Caller("unknown token", "Bearer mr_" + "x" * 43),
    ]
    _, revoked = await issue_token(
        api.services.executor,
        api.services.pepper,
        actor="admin",
        principal="rita",
        roles=(Role.ADMIN,),
    )
    token_id = (await api.get("/api/v1/me", as_=revoked)).json()["token_id"]
    await revoke_token(api.services.executor, token_id, actor="admin", reason="leaked")
    callers.append(Caller("revoked token", f"Bearer {revoked}"))
    _, expired = await issue_token(
        api.services.executor,
        api.services.pepper,
        actor="admin",
        principal="ed",
        roles=(Role.ADMIN,),
        now=now - timedelta(hours=2),
        expires_at=now - timedelta(hours=1),
    )
    callers.append(Caller("expired token", f"Bearer {expired}"))
    callers += [
        Caller("reader", f"Bearer {await api.token('rob', Role.READER)}", Role.READER),
        Caller(
            "contributor scoped to fraud*",
            f"Bearer {await api.token('mallory', Role.CONTRIBUTOR, scopes=('fraud*',))}",
            Role.CONTRIBUTOR,
            scoped=True,
        ),
        Caller("contributor", f"Bearer {carol}", Role.CONTRIBUTOR),
        Caller("approver", f"Bearer {await api.token('dave', Role.APPROVER)}", Role.APPROVER),
        Caller("admin", f"Bearer {api.admin}", Role.ADMIN),
    ]

    await _ok(await api.put("/api/v1/policy", json=POLICY))
    for name in ("churn", "fraud", "renamable", "retired", "rollbacker", "doomed"):
        await _ok(await api.post(M, json={"name": name, "tags": {"team": "risk"}}, as_=carol))
    for n in range(1, 5):
        await _ok(
            await api.post(
                V, json={"artifacts": [artifact(n)], "tags": {"team": "risk"}}, as_=carol
            )
        )
    # v5 holds a stored blob, to download
    await _ok(await api.put(f"{M}/churn/blobs/sha256:{EMPTY}", as_=carol))
    stored = {"path": "empty.bin", "sha256": EMPTY, "size": 0}
    await _ok(await api.post(V, json={"artifacts": [stored]}, as_=carol))
    await _ok(
        await api.post(
            f"{V}/1/metrics",
            json={"metrics": [{"key": "auc", "value": 0.9, "dataset": "holdout"}]},
            as_=carol,
        )
    )
    for stage in ("staging", "production"):
        await _ok(await api.post(f"{V}/1/stage", json={"to": stage}, as_=carol))
    for alias, version in (("candidate", 1), ("old", 2)):
        await _ok(await api.put(f"{M}/churn/aliases/{alias}", json={"version": version}, as_=carol))
    requests = {}
    for purpose in ("to_read", "to_approve", "to_reject", "to_cancel"):
        made = await _ok(await api.post(f"{M}/churn/promotions", json=CHAMPION, as_=carol), 202)
        requests[purpose] = made.json()["request_id"]
    await _ok(
        await api.post(
            f"{V}/1/deployments",
            json={"environment": "prod", "target": "k8s", "deployment_id": "dep-1"},
            as_=carol,
        )
    )
    # rollbacker: v1 then v2 in production, so a rollback has somewhere to go
    for n in (1, 2):
        await _ok(
            await api.post(f"{M}/rollbacker/versions", json={"artifacts": [artifact(n)]}, as_=carol)
        )
        for stage in ("staging", "production"):
            await _ok(
                await api.post(f"{M}/rollbacker/versions/{n}/stage", json={"to": stage}, as_=carol)
            )
    outcome, _ = await issue_token(
        api.services.executor,
        api.services.pepper,
        actor="admin",
        principal="temp",
        roles=(Role.READER,),
    )
    sessions = {}
    for purpose in ("upload", "abandoned"):
        opened = await api.post(
            f"{M}/churn/uploads", json={"digest": f"sha256:{EMPTY}", "size": 0}, as_=carol
        )
        sessions[purpose] = (await _ok(opened, 201)).json()["id"]
    hook = await _ok(
        await api.post(
            "/api/v1/webhooks", json={"url": "https://hooks.example.invalid/h", "models": ["churn"]}
        ),
        201,
    )
    hook_id = hook.json()["subscription_id"]
    # A dead-lettered delivery to read and redeliver (no dispatcher runs here).
    await api.services.pool.execute(
        "INSERT INTO webhook_deliveries (subscription_id, log_position, event_id, event_type,"
        " model_id, status, attempts) VALUES ($1, 1, gen_random_uuid(), 'model.registered', 'm', 'dead', 3)",
        hook_id,
    )
    await _ok(await api.put("/api/v1/access/roles/doomed-role", json={"permissions": ["read"]}))
    grant = await _ok(
        await api.post(
            "/api/v1/access/grants", json={"group": "risk", "role": "reader", "model": "fraud*"}
        ),
        201,
    )
    await _ok(
        await api.post("/api/v1/service-accounts", json={"name": "sa-doomed", "roles": ["reader"]}),
        201,
    )
    # A person with a token of their own, for the one erasure the matrix allows.
    await api.token("erin", Role.READER)
    ids = {
        **requests,
        **sessions,
        "throwaway": outcome.state.token_id,
        "hook": hook_id,
        "grant": grant.json()["request_id"],
        "erasable": "erin",
    }
    await wait_for_position(
        api.services.pool,
        await head_position(api.services.pool),
        [p.name for p in all_projections()],
        timeout=10,
    )
    return callers, ids


async def _events(api: Api) -> int:
    count: int = await api.services.pool.fetchval("SELECT count(*) FROM events")
    return count


def _expected(caller: Caller, row: Row) -> tuple[str, Permission | None]:
    """("401" | "403" | "404" | "allowed", the permission a 403 must name)."""
    if caller.role is None:
        return "401", None
    if row.permission is not None and row.permission not in ROLE_PERMISSIONS[caller.role]:
        return "403", row.permission
    if not caller.scoped:
        return "allowed", None
    if isinstance(row.scoped, Permission):
        return "403", row.scoped
    if row.scoped == "deny":
        return "403", row.permission
    return ("404", None) if row.scoped == "hide" else ("allowed", None)


def _judge(
    method: str,
    expected: str,
    permission: Permission | None,
    response: httpx.Response,
    *,
    must_succeed: bool,
    answers: int | None = None,
) -> str | None:
    """What is wrong with ``response`` (None: nothing)."""
    status = response.status_code
    if status >= 500:
        return "server error"
    mlflow = response.request.url.path.startswith(MF)  # also MLflow's artifact proxy
    code = "error_code" if mlflow else "code"
    media_type = "application/json" if mlflow else "application/problem+json"
    if expected == "allowed" and answers is not None:
        return None if status == answers else f"expected {answers} for every allowed caller"
    if expected == "401":
        problem = response.json() if status == 401 else {}
        if (
            status != 401
            or problem.get(code) != ("UNAUTHENTICATED" if mlflow else "unauthenticated")
            or "Bearer" not in response.headers.get("WWW-Authenticate", "")
        ):
            return f"expected 401 {media_type} with WWW-Authenticate"
        return None
    if expected == "403":
        problem = response.json() if status == 403 else {}
        if status != 403 or problem.get("details", {}).get("permission") != permission:
            return f"expected 403 naming {permission}"
        if mlflow and problem.get(code) != "PERMISSION_DENIED":
            return "an MLflow 403 must say PERMISSION_DENIED"
        return (
            None
            if response.headers["content-type"] == media_type
            else f"a 403 must be {media_type}"
        )
    if expected == "404":
        return None if status == 404 else "expected 404 (out of its scope)"
    if status in {401, 403}:
        return "expected to be allowed"
    if must_succeed and not 200 <= status < 300:
        return "expected a 2xx (the request is realistic)"
    # read-your-writes: a write that recorded something says where, and the new ETag
    recorded = (
        method != "GET"
        and 200 <= status < 300
        and bool(response.content)  # a 204 (an aborted upload) says nothing
        and bool(response.json().get("events"))
    )
    if recorded and not ("Modelreg-Position" in response.headers and "ETag" in response.headers):
        return "a write without Modelreg-Position and ETag"
    return None


async def test_every_route_for_every_caller(api: Api) -> None:
    callers, ids = await _setup(api)
    failures: list[str] = []
    for (method, template), row in MATRIX.items():
        path = row.path.format(**ids)
        first_allowed = True
        for caller in callers:
            body = (
                row.body(caller.label.replace(" ", "-").replace("*", ""))
                if callable(row.body)
                else row.body
            )
            headers = {"Authorization": caller.header} if caller.header else {}
            headers |= row.headers or {}
            before = await _events(api)
            response = await api.client.request(method, path, headers=headers, json=body)
            expected, permission = _expected(caller, row)
            wrong = _judge(
                method,
                expected,
                permission,
                response,
                must_succeed=first_allowed or method == "GET",
                answers=row.answers,
            )
            if expected == "allowed":
                first_allowed = False
            elif wrong is None and await _events(api) != before:
                wrong = "a refused request recorded events"
            if wrong is not None:
                failures.append(
                    f"{wrong}: {method} {template} as {caller.label}: {response.status_code} {response.text[:300]}"
                )
    assert not failures, "\n".join(failures)


async def test_a_scoped_token_sees_and_touches_only_its_models(api: Api) -> None:
    carol = await api.token("carol", Role.CONTRIBUTOR)
    mallory = await api.token("mallory", Role.CONTRIBUTOR, scopes=("fraud*",))
    for name in ("churn", "fraud-eu"):
        await _ok(await api.post(M, json={"name": name}, as_=carol))
    made = await _ok(await api.post(M, json={"name": "fraud-us"}, as_=mallory), 201)
    position = made.headers["Modelreg-Position"]

    listed = await _ok(await api.get(f"{M}?min_position={position}", as_=mallory))
    assert [m["name"] for m in listed.json()["items"]] == ["fraud-eu", "fraud-us"]
    await _ok(await api.put(f"{M}/fraud-eu/tags/team", json={"value": "risk"}, as_=mallory))
    refused = await api.put(f"{M}/churn/tags/team", json={"value": "risk"}, as_=mallory)
    assert refused.status_code == 403
    assert refused.json()["details"] == {"permission": "write", "scope": "model 'churn'"}
    # renaming into a name outside the scope is refused too, and so is the registry policy
    renamed = await api.post(f"{M}/fraud-eu/rename", json={"new_name": "churn-eu"}, as_=mallory)
    assert (renamed.status_code, renamed.json()["details"]["scope"]) == (403, "model 'churn-eu'")
    hidden = await api.get(f"{M}/churn", as_=mallory)
    assert (hidden.status_code, hidden.json()["details"]["permission"]) == (403, "read")


async def test_a_revoked_token_stops_working_on_the_next_request(api: Api) -> None:
    secret = await api.token("carol", Role.CONTRIBUTOR)
    me = await _ok(await api.get("/api/v1/me", as_=secret))
    assert (me.json()["name"], me.json()["roles"]) == ("carol", ["contributor"])
    revoked = await _ok(await api.delete(f"/api/v1/tokens/{me.json()['token_id']}?reason=leaked"))
    assert revoked.json()["events"] == ["token.revoked"]
    after = await api.get("/api/v1/me", as_=secret)
    assert after.status_code == 401
    assert after.json()["detail"] == "this token was revoked"
    unknown = await api.delete("/api/v1/tokens/no-such-token")
    assert unknown.status_code == 404


# --- the web UI ---------------------------------------------------------------------------
# The same matrix for /ui, where a person holds a session cookie instead of a bearer token.
# Without a usable session a page sends to the login form (or answers 401); a scoped caller
# gets 404 for a model outside its scope, never a 403 that would tell the model exists; every
# form post needs its CSRF token, whoever sends it.

UI_CSRF = re.compile(r'name="_csrf_token" value="([^"]+)"')


@dataclass(frozen=True)
class UiRow:
    """A UI route: the permission it needs and a request on ``churn``, outside the scoped
    callers' ``fraud*``. ``scoped="hide"``: that request answers them 404, and ``in_scope``
    (the same page of ``fraud``) answers. ``scoped="allow"``: a registry-wide page that must
    not show ``hidden`` to them. ``form``: a POST's fields (the CSRF token is added)."""

    path: str
    permission: Permission | None
    scoped: Literal["allow", "hide"] = "hide"
    in_scope: str | None = None
    hidden: str | None = None
    form: dict[str, str] | None = None
    logs_out: bool = False  # the form ends the session: its answer is the login form


U = "/ui/models"
UI_MATRIX: dict[tuple[str, str], UiRow] = {
    ("GET", "/ui"): UiRow("/ui/?q=", R, scoped="allow", hidden=f"{U}/churn"),
    ("GET", "/ui/models/{name}"): UiRow(f"{U}/churn", R, in_scope=f"{U}/fraud"),
    ("GET", "/ui/models/{name}/versions/{version}"): UiRow(
        f"{U}/churn/versions/1", R, in_scope=f"{U}/fraud/versions/1"
    ),
    ("GET", "/ui/models/{name}/versions/{version}/files/{file_path}"): UiRow(
        f"{U}/churn/versions/1/files/empty.bin",
        R,
        in_scope=f"{U}/fraud/versions/1/files/empty.bin",
    ),
    ("GET", "/ui/models/{name}/compare"): UiRow(
        f"{U}/churn/compare?versions=1", R, in_scope=f"{U}/fraud/compare?versions=1"
    ),
    ("GET", "/ui/approvals"): UiRow("/ui/approvals", R, scoped="allow", hidden="{to_decide}"),
    ("GET", "/ui/audit"): UiRow(
        "/ui/audit?model=churn&since=2000-01-01", R, in_scope="/ui/audit?model=fraud"
    ),
    ("GET", "/ui/access"): UiRow("/ui/access?as_of=1", ADMIN, scoped="allow"),
    ("GET", "/ui/position"): UiRow("/ui/position", None, scoped="allow"),
    ("POST", "/ui/approvals/{request_id}"): UiRow(
        "/ui/approvals/{to_decide}", A, form={"decision": "reject", "comment": "not yet"}
    ),
    # Last: it ends each caller's session.
    ("POST", "/ui/logout"): UiRow("/ui/logout", None, scoped="allow", form={}, logs_out=True),
}
UI_PUBLIC: dict[tuple[str, str], str] = {
    ("GET", "/ui/login"): "/ui/login",
    ("POST", "/ui/login"): "/ui/login",  # tested with every caller below: it logs each in
    # Sign-in through the identity provider (tests/e2e/test_signin.py); 404 unless configured.
    ("GET", "/ui/login/oidc"): "/ui/login/oidc",
    ("GET", "/ui/login/oidc/callback"): "/ui/login/oidc/callback",
    ("GET", "/ui/static/{file_path}"): "/ui/static/ui.css",
}


@dataclass
class UiCaller:
    label: str
    client: httpx.AsyncClient
    role: Role | None  # None: no usable session
    scoped: bool = False


@pytest.fixture
async def ui_api(db: Database) -> AsyncIterator[Api]:
    async with running_api(db, ui=True) as running:
        yield running


def ui_routes(api: Api) -> set[tuple[str, str]]:
    app = Litestar(**api_and_ui_app_kwargs(api.services))
    return {
        (method, route.path_format)
        for route in app.routes
        if route.path_format.startswith("/ui")
        for method in getattr(route, "methods", ())
        if method not in {"HEAD", "OPTIONS"}
    }


async def test_every_ui_route_has_a_row_in_the_matrix(ui_api: Api) -> None:
    routes = ui_routes(ui_api)
    missing = sorted(routes - UI_MATRIX.keys() - UI_PUBLIC.keys())
    assert not missing, f"UI routes without an authorisation row in UI_MATRIX (add one): {missing}"
    stale = sorted((UI_MATRIX.keys() | UI_PUBLIC.keys()) - routes)
    assert not stale, f"rows for UI routes the app no longer has: {stale}"


async def _csrf(client: httpx.AsyncClient) -> str:
    found = UI_CSRF.search((await client.get("/ui/login")).text)
    assert found is not None
    return found.group(1)


async def _logged_in(api: Api, label: str, secret: str, role: Role, scoped: bool) -> UiCaller:
    client = api.browser()
    answer = await client.post(
        "/ui/login", data={"token": secret, "_csrf_token": await _csrf(client)}
    )
    assert answer.status_code == 303, f"{label} could not log in: {answer.text}"
    return UiCaller(label, client, role, scoped)


async def _ui_setup(api: Api) -> tuple[list[UiCaller], dict[str, str]]:
    """churn and fraud, each with a version holding a stored file; a request on churn that
    needs an approval; a person of each kind logged in (and some who cannot be)."""
    carol = await api.token("carol", Role.CONTRIBUTOR)
    await _ok(await api.put("/api/v1/policy", json=POLICY))
    for name in ("churn", "fraud"):
        await _ok(await api.post(M, json={"name": name}, as_=carol))
        await _ok(await api.put(f"{M}/{name}/blobs/sha256:{EMPTY}", as_=carol))
        stored = {"path": "empty.bin", "sha256": EMPTY, "size": 0}
        await _ok(await api.post(f"{M}/{name}/versions", json={"artifacts": [stored]}, as_=carol))
    asked = await _ok(await api.post(f"{M}/churn/promotions", json=CHAMPION, as_=carol), 202)

    anonymous = UiCaller("no session", api.browser(), None)
    forged = UiCaller("forged cookie", api.browser(), None)
    forged.client.cookies.set("modelreg_session", "A" * 60, domain="modelreg.test", path="/ui")
    revoked_secret = await api.token("rita", Role.ADMIN)
    revoked = await _logged_in(api, "revoked token", revoked_secret, Role.ADMIN, False)
    token_id = (await api.get("/api/v1/me", as_=revoked_secret)).json()["token_id"]
    await _ok(await api.delete(f"/api/v1/tokens/{token_id}?reason=leaked"))
    revoked.role = None
    callers = [
        anonymous,
        forged,
        revoked,
        await _logged_in(api, "reader", await api.token("rob", Role.READER), Role.READER, False),
        await _logged_in(
            api,
            "reader scoped to fraud*",
            await api.token("sam", Role.READER, scopes=("fraud*",)),
            Role.READER,
            True,
        ),
        await _logged_in(api, "contributor", carol, Role.CONTRIBUTOR, False),
        await _logged_in(
            api,
            "approver scoped to fraud*",
            await api.token("pat", Role.APPROVER, scopes=("fraud*",)),
            Role.APPROVER,
            True,
        ),
        await _logged_in(
            api, "approver", await api.token("dave", Role.APPROVER), Role.APPROVER, False
        ),
        await _logged_in(api, "admin", api.admin, Role.ADMIN, False),
    ]
    await wait_for_position(
        api.services.pool,
        await head_position(api.services.pool),
        [p.name for p in all_projections()],
        timeout=10,
    )
    return callers, {"to_decide": asked.json()["request_id"]}


def _ui_expected(caller: UiCaller, row: UiRow) -> str:
    """ "login" | "403" | "404" | "allowed" for ``row.path``."""
    if caller.role is None:
        return "login"
    if row.permission is not None and row.permission not in ROLE_PERMISSIONS[caller.role]:
        return "403"
    return "404" if caller.scoped and row.scoped == "hide" else "allowed"


def _to_login(response: httpx.Response) -> bool:
    return response.status_code == 303 and response.headers["location"].startswith("/ui/login")


def _ui_judge(
    expected: str, row: UiRow, response: httpx.Response, *, must_succeed: bool
) -> str | None:
    status, permission = response.status_code, row.permission
    to_login = _to_login(response)
    if status >= 500:
        return "server error"
    if expected == "login":
        return None if to_login or status == 401 else "expected the login form (303) or 401"
    if expected == "403":
        shown = html.unescape(response.text)
        named = permission is not None and f"'{permission.value}' permission" in shown
        return None if status == 403 and named else f"expected 403 naming {permission}"
    if expected == "404":
        return None if status == 404 else "expected 404 (out of its scope: it does not exist)"
    if row.logs_out:
        return None if to_login else "expected logging out to lead to the login form"
    if to_login or status in {401, 403}:
        return "expected to be allowed"
    if must_succeed and not 200 <= status < 400:
        return "expected a 2xx or a redirect after a form (the request is realistic)"
    return None


async def _ui_request(
    api: Api, caller: UiCaller, row: UiRow, path: str, *, must_succeed: bool
) -> list[str]:
    """What is wrong with ``caller``'s request of ``row`` (empty: nothing)."""
    wrong: list[tuple[str, httpx.Response]] = []
    expected = _ui_expected(caller, row)
    before = await _events(api)
    if row.form is not None:
        # a form without its CSRF token is refused, whoever sends it
        forged = await caller.client.post(path, data=row.form)
        if forged.status_code != 403 or await _events(api) != before:
            wrong.append(("a form without its CSRF token must be refused (403)", forged))
        data = {**row.form, "_csrf_token": await _csrf(caller.client)}
        response = await caller.client.post(path, data=data)
    else:
        response = await caller.client.get(path)
    problem = _ui_judge(expected, row, response, must_succeed=must_succeed)
    if problem is None and row.logs_out and expected == "allowed":
        after = await caller.client.get("/ui/")
        if not _to_login(after):
            wrong.append(("the session outlived logging out", after))
    if problem is None and expected != "allowed" and await _events(api) != before:
        problem = "a refused request recorded events"
    if problem is not None:
        wrong.append((problem, response))
    if caller.scoped and expected != "login" and row.form is None:
        if row.in_scope is not None:
            mine = await caller.client.get(row.in_scope)
            if mine.status_code != 200:
                wrong.append(("a page of a model in its scope must answer", mine))
        if row.hidden is not None and row.hidden in response.text:
            wrong.append(("a scoped caller is shown what is outside its scope", response))
    return [f"{what}: as {caller.label}: {r.status_code} {r.text[:200]}" for what, r in wrong]


async def test_every_ui_page_and_form_for_every_caller(ui_api: Api) -> None:
    # given every kind of caller, each with its own browser session (or none)
    callers, ids = await _ui_setup(ui_api)
    failures: list[str] = []
    try:
        # when each asks for every page and posts every form, in the matrix's order
        for (method, template), row in UI_MATRIX.items():
            path = row.path.format(**ids)
            row = dataclasses.replace(row, hidden=row.hidden and row.hidden.format(**ids))
            first_allowed = True
            for caller in callers:
                wrong = await _ui_request(
                    ui_api, caller, row, path, must_succeed=first_allowed or method == "GET"
                )
                first_allowed = first_allowed and _ui_expected(caller, row) != "allowed"
                failures += [f"{method} {template}: {w}" for w in wrong]
    finally:
        for caller in callers:
            await caller.client.aclose()

    # then each got what its session allows, and nothing more
    assert not failures, "\n".join(failures)


async def test_the_ui_login_and_its_assets_are_open(ui_api: Api) -> None:
    async with ui_api.browser() as client:
        for (method, _), path in UI_PUBLIC.items():
            if method == "GET":
                answer = await client.get(path)
                # No identity provider is configured here: its sign-in is absent, not locked.
                expected = 404 if path.startswith("/ui/login/oidc") else 200
                assert answer.status_code == expected, (path, answer.status_code)
        # the login form itself is a form: without its CSRF token it is refused
        refused = await client.post("/ui/login", data={"token": ui_api.admin})
        assert refused.status_code == 403
        assert "modelreg_session" not in refused.headers.get("set-cookie", "")
