"""What makes a version reproducible: the content checks and its digest."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from events.errors import ValidationError
from events.version_content import (
    MAX_ARTIFACTS,
    ArtifactEntry,
    CodeReference,
    DatasetReference,
    DatasetRole,
    Dependencies,
    RunReference,
    VersionContent,
    content_digest,
    validate_content,
)
from tests.unit.domain_helpers import SHA, content


def _artifact(
    path: str = "model.pkl", uri: str = "s3://b/model.pkl", sha256: str = SHA, size: int = 1
) -> ArtifactEntry:
    return ArtifactEntry(path=path, external=True, uri=uri, sha256=sha256, size=size)


def _rejected(body: VersionContent) -> ValidationError:
    with pytest.raises(ValidationError) as error:
        validate_content(body)
    return error.value


def test_complete_content_is_accepted() -> None:
    validate_content(content())


def test_the_digest_is_a_sha256_over_the_canonical_encoding_and_is_stable() -> None:
    assert content_digest(content(1)) == content_digest(content(1))
    assert content_digest(content(1)).startswith("sha256:")
    assert len(content_digest(content(1))) == len("sha256:") + 64
    assert content_digest(content(1)) != content_digest(content(2))


def test_a_version_needs_at_least_one_artifact() -> None:
    error = _rejected(VersionContent(artifacts=()))
    assert (error.field, error.rule) == ("content.artifacts", "required")


def test_more_artifacts_than_the_limit_are_rejected() -> None:
    many = tuple(_artifact(path=f"f{i}") for i in range(MAX_ARTIFACTS + 1))
    assert _rejected(VersionContent(artifacts=many)).rule == "too_many"


@pytest.mark.parametrize(
    ("entry", "field", "rule"),
    [
        (_artifact(sha256="AB" * 32), "content.artifacts[0].sha256", "pattern"),
        (_artifact(sha256="ab"), "content.artifacts[0].sha256", "pattern"),
        (_artifact(path="/etc/passwd"), "content.artifacts[0].path", "pattern"),
        (_artifact(path="a/../../b"), "content.artifacts[0].path", "pattern"),
        (_artifact(path=""), "content.artifacts[0].path", "required"),
        (_artifact(uri="model.pkl"), "content.artifacts[0].uri", "pattern"),
        (_artifact(size=-1), "content.artifacts[0].size", "range"),
    ],
)
def test_a_bad_artifact_entry_is_rejected_naming_the_field(
    entry: ArtifactEntry, field: str, rule: str
) -> None:
    error = _rejected(VersionContent(artifacts=(entry,)))
    assert (error.field, error.rule) == (field, rule)


def test_two_artifacts_at_the_same_path_are_rejected() -> None:
    error = _rejected(VersionContent(artifacts=(_artifact(), _artifact())))
    assert (error.field, error.rule) == ("content.artifacts[1].path", "unique")


def test_a_code_reference_needs_a_hex_commit() -> None:
    body = replace(content(), code=CodeReference(repository="https://git/x", commit="main"))
    assert _rejected(body).field == "content.code.commit"


def test_dependencies_need_a_python_version() -> None:
    body = replace(content(), dependencies=Dependencies(python_version="three"))
    assert _rejected(body).field == "content.dependencies.python_version"


def test_a_non_finite_training_parameter_is_rejected() -> None:
    body = replace(content(), parameters={"lr": float("nan")})
    error = _rejected(body)
    assert (error.field, error.rule) == ("content.parameters.lr", "finite")


def test_a_parameter_key_outside_the_key_set_is_rejected() -> None:
    assert _rejected(replace(content(), parameters={"learning rate": 0.1})).rule == "pattern"


def test_the_same_dataset_in_the_same_role_twice_is_rejected() -> None:
    dataset = DatasetReference(name="holdout", uri="s3://d/h", digest="d1", role=DatasetRole.TEST)
    error = _rejected(replace(content(), datasets=(dataset, dataset)))
    assert error.rule == "unique"


def test_a_run_reference_needs_a_run_id_and_a_uri_shaped_link() -> None:
    assert _rejected(replace(content(), run=RunReference(run_id=""))).field == "content.run.run_id"
    assert (
        _rejected(replace(content(), run=RunReference(run_id="r", url="not a url"))).field
        == "content.run.url"
    )
