"""A registry with content for the UI's tests, written through the JSON API: a model with
versions, metric histories, v1 in production and a promotion request of v3 (with a metric
gate against production) waiting for a second person; a model
outside a scoped reader's scope; the tokens of the people involved."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

import httpx

API = "/api/v1"
CSRF_FIELD = re.compile(r'name="_csrf_token" value="([^"]+)"')


@dataclass(frozen=True)
class UiRegistry:
    tag: str
    model: str  # in the scoped reader's scope
    hidden: str  # outside it
    requester: str  # secrets below
    approver: str
    scoped_reader: str
    request_id: str
    position: int  # of the promotion request
    deployed_at: int  # the position of the deployment's success report


# What v3 records about where it came from (the version page's lineage).
LINEAGE: dict[str, Any] = {
    "code": {
        "repository": "https://git.example.com/risk/fraud",
        "commit": "3f9c2a1b7d4e5f60718293a4b5c6d7e8f9012345",
        "path": "train.py",
    },
    "datasets": [
        {
            "name": "transactions-2026q1",
            "uri": "s3://data/transactions/2026q1.parquet",
            "digest": "sha256:" + "1f" * 32,
            "role": "train",
        },
        {
            "name": "holdout-2026q1",
            "uri": "s3://data/holdout/2026q1.parquet",
            "digest": "sha256:" + "2e" * 32,
            "role": "validation",
        },
    ],
    "run": {
        "run_id": "run-42",
        "url": "https://mlflow.example.com/#/runs/run-42",
        "tracker": "mlflow",
    },
    "dependencies": {"python_version": "3.11.9"},
}


def _ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, f"{response.status_code}: {response.text}"
    return response.json()


def _token(
    http: httpx.Client, admin: str, principal: str, *roles: str, scopes: tuple[str, ...] = ()
) -> str:
    issued = _ok(
        http.post(
            f"{API}/tokens",
            headers={"Authorization": f"Bearer {admin}"},
            json={"principal": principal, "roles": list(roles), "scopes": list(scopes)},
        )
    )
    secret: str = issued["secret"]
    return secret


def populate(http: httpx.Client, admin: str) -> UiRegistry:
    tag = secrets.token_hex(3)
    model, hidden = f"fraud-{tag}", f"churn-{tag}"
    requester = _token(http, admin, f"dana-{tag}", "contributor", "approver")
    approver = _token(http, admin, f"bob-{tag}", "approver")
    reader = _token(http, admin, f"rita-{tag}", "reader", scopes=(f"fraud-{tag}*",))
    as_requester = {"Authorization": f"Bearer {requester}"}
    policy = {
        "policy": {
            "transitions": [
                {"from_stage": "development", "to_stage": "staging"},
                {
                    "from_stage": "staging",
                    "to_stage": "production",
                    "approvals": 1,
                    "gates": [
                        {
                            "metric": "auc",
                            "dataset": "holdout",
                            "op": ">=",
                            "compare_to_production": True,
                        }
                    ],
                },
                {"from_stage": "staging", "to_stage": "development"},
                {"from_stage": "development", "to_stage": "archived"},
                {"from_stage": "staging", "to_stage": "archived"},
                {"from_stage": "production", "to_stage": "archived"},
            ]
        },
        "comment": "production needs a second person",
    }
    # First without the approval, to put v1 in production: the approvals inbox then
    # weighs v3 against it.
    direct = {
        "policy": {
            "transitions": [
                {"from_stage": "development", "to_stage": "staging"},
                {"from_stage": "staging", "to_stage": "production"},
            ]
        },
        "comment": "bootstrap: v1 straight to production",
    }
    for name in (model, hidden):
        _ok(
            http.post(
                f"{API}/models",
                headers=as_requester,
                json={
                    "name": name,
                    "description": "Card fraud scores" if name == model else "Churn",
                },
            )
        )
    _ok(
        http.put(
            f"{API}/models/{model}/policy",
            headers={"Authorization": f"Bearer {admin}"},
            json=direct,
        )
    )
    for number in (1, 2, 3):
        _ok(
            http.post(
                f"{API}/models/{model}/versions",
                headers=as_requester,
                json={
                    "artifacts": [
                        {
                            "path": "model.pkl",
                            "external": True,
                            "uri": f"s3://m/{tag}/{number}",
                            "sha256": f"{number:064x}",
                            "size": 1000 * number,
                        }
                    ],
                    "params": {"depth": 4 + number, "lr": 0.1},
                    **(LINEAGE if number == 3 else {}),
                },
            )
        )
        points = [
            {"key": key, "value": value, "step": step, "dataset": "holdout"}
            for step in range(10)
            for key, value in (
                ("auc", 0.7 + 0.02 * number + 0.01 * step),
                ("loss", 1.0 / (step + number + 1)),
            )
        ]
        _ok(
            http.post(
                f"{API}/models/{model}/versions/{number}/metrics",
                headers=as_requester,
                json={"metrics": points},
            )
        )
    _ok(
        http.post(
            f"{API}/models/{hidden}/versions",
            headers=as_requester,
            json={
                "artifacts": [
                    {
                        "path": "m.pkl",
                        "external": True,
                        "uri": "s3://m/x",
                        "sha256": "ab" * 32,
                        "size": 1,
                    }
                ],
                "params": {},
            },
        )
    )
    for stage in ("staging", "production"):
        _ok(
            http.post(
                f"{API}/models/{model}/versions/1/stage", headers=as_requester, json={"to": stage}
            )
        )
    _ok(
        http.put(
            f"{API}/models/{model}/policy",
            headers={"Authorization": f"Bearer {admin}"},
            json=policy,
        )
    )
    _ok(
        http.post(
            f"{API}/models/{model}/versions/3/stage", headers=as_requester, json={"to": "staging"}
        )
    )
    asked = _ok(
        http.post(
            f"{API}/models/{model}/versions/3/stage",
            headers=as_requester,
            json={"to": "production", "comment": "better auc on holdout"},
        )
    )
    # v2 deployed where staging is wanted: v3 is in staging, so the place has drifted.
    deployment = f"dep-{tag}"
    _ok(
        http.post(
            f"{API}/models/{model}/versions/2/deployments",
            headers=as_requester,
            json={
                "environment": "prod",
                "target": "eu-1",
                "desired_stage": "staging",
                "deployment_id": deployment,
            },
        )
    )
    reported = _ok(
        http.post(
            f"{API}/models/{model}/deployments/report",
            headers=as_requester,
            json={"deployment_id": deployment, "status": "succeeded"},
        )
    )
    # The pages list models from views that follow the log: the registry is ready for the
    # tests once the views show the last write, as a reader passing its position would see.
    _ok(
        http.get(
            f"{API}/models",
            headers={"Authorization": f"Bearer {admin}"},
            params={"min_position": reported["position"]},
        )
    )
    return UiRegistry(
        tag=tag,
        model=model,
        hidden=hidden,
        requester=requester,
        approver=approver,
        scoped_reader=reader,
        request_id=asked["request_id"],
        position=asked["position"],
        deployed_at=reported["position"],
    )


def log_in(http: httpx.Client, token: str) -> None:
    """Log ``http`` in through the login form (it keeps the session and CSRF cookies)."""
    form = http.get("/ui/login")
    csrf = CSRF_FIELD.search(form.text)
    assert csrf is not None, form.text
    answer = http.post("/ui/login", data={"token": token, "_csrf_token": csrf.group(1)})
    assert answer.status_code == 303, answer.text


def csrf_of(page: httpx.Response) -> str:
    found = CSRF_FIELD.search(page.text)
    assert found is not None, page.text
    return found.group(1)
