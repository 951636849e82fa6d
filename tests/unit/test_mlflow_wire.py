"""The MLflow layer's pure parts: the error envelope and its statuses, credentials as MLflow
sends them, and the idempotency key derived for retried creates (no I/O)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from events.errors import ValidationError
from service.api.mlflow.auth import secret_of
from service.api.mlflow.errors import envelope_of
from service.api.mlflow.retries import WINDOW_SECONDS, derived_seeds
from service.api.mlflow.routes_versions import source_uri
from service.api.mlflow.wire import CreateModelVersion, Tag, version_number
from service.api.problems import AuthenticationError, Problem


@pytest.mark.parametrize(
    ("code", "status", "mlflow_code", "mlflow_status"),
    [
        ("not_found", 404, "RESOURCE_DOES_NOT_EXIST", 404),
        ("already_exists", 409, "RESOURCE_ALREADY_EXISTS", 400),
        ("validation_error", 422, "INVALID_PARAMETER_VALUE", 400),
        ("bad_request", 400, "INVALID_PARAMETER_VALUE", 400),
        ("invalid_transition", 409, "INVALID_PARAMETER_VALUE", 400),
        ("policy_violation", 409, "PERMISSION_DENIED", 403),
        ("permission_denied", 403, "PERMISSION_DENIED", 403),
        ("unauthenticated", 401, "UNAUTHENTICATED", 401),
        ("conflict", 409, "RESOURCE_CONFLICT", 409),
        ("precondition_failed", 412, "RESOURCE_CONFLICT", 409),
        ("http_413", 413, "INVALID_PARAMETER_VALUE", 413),
        ("http_404", 404, "ENDPOINT_NOT_FOUND", 404),
        ("rate_limited", 429, "REQUEST_LIMIT_EXCEEDED", 429),
        ("unavailable", 503, "TEMPORARILY_UNAVAILABLE", 503),
        ("insufficient_storage", 507, "IO_ERROR", 507),
        ("internal_error", 500, "INTERNAL_ERROR", 500),
    ],
)
def test_every_problem_answers_mlflows_code_and_status(
    code: str, status: int, mlflow_code: str, mlflow_status: int
) -> None:
    problem = Problem(
        type=f"urn:modelreg:{code}", title="t", status=status, detail="why", code=code, field="f"
    )
    envelope, answered = envelope_of(problem)
    assert (envelope.error_code, answered, envelope.message, envelope.field) == (
        mlflow_code,
        mlflow_status,
        "why",
        "f",
    )
    # a refusal the caller can fix is never a status MLflow's client retries
    assert (answered >= 500) == (code in {"unavailable", "insufficient_storage", "internal_error"})


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_credentials_come_as_a_bearer_token_or_as_the_basic_password() -> None:
    assert secret_of("Bearer mr_abc") == "mr_abc"
    assert secret_of("bearer  mr_abc ") == "mr_abc"
    assert secret_of(_basic("ci-job:mr_abc")) == "mr_abc"
    assert secret_of(_basic("mr_abc:")) == "mr_abc"  # only one field could be set
    assert secret_of(_basic("mr_abc")) == "mr_abc"
    for refused in ("", "Bearer", "Bearer  ", "Basic !!!", _basic(":"), "Digest x", "mr_abc"):
        with pytest.raises(AuthenticationError):
            secret_of(refused)


def test_a_create_s_derived_key_is_the_same_for_its_retries_and_only_for_them() -> None:
    at = datetime(2026, 12, 5, 13, 0, tzinfo=UTC)
    body = CreateModelVersion(name="m", source="s3://b/m", tags=[Tag(key="a", value="1")])
    seed, previous = derived_seeds("ana", "/api/2.0/mlflow/model-versions/create", body, at)
    # a retry within the window: the same key; the window before is checked as well
    assert derived_seeds("ana", "/api/2.0/mlflow/model-versions/create", body, at)[0] == seed
    later = at + timedelta(seconds=WINDOW_SECONDS)
    assert derived_seeds("ana", "/api/2.0/mlflow/model-versions/create", body, later)[1] == seed
    assert previous != seed
    # another caller, route or body: another key
    others = [
        derived_seeds("bob", "/api/2.0/mlflow/model-versions/create", body, at)[0],
        derived_seeds("ana", "/api/2.0/mlflow/registered-models/create", body, at)[0],
        derived_seeds(
            "ana",
            "/api/2.0/mlflow/model-versions/create",
            CreateModelVersion(name="m", source="s3://b/other"),
            at,
        )[0],
    ]
    assert seed not in others and len(set(others)) == 3


def test_versions_sources_and_their_refusals() -> None:
    assert version_number("7") == version_number(7) == 7
    for bad in ("", "x", "-1", "1.0", "99999999999", "٣"):
        with pytest.raises(ValidationError) as refused:
            version_number(bad)
        assert refused.value.field == "version"
    assert source_uri("/mnt/models/m") == "file:///mnt/models/m"
    assert source_uri("runs:/abc/model") == "runs:/abc/model"
