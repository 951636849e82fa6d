"""MLflow artifact paths and directory listings of a manifest (events.mlflow_artifacts)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.errors import ValidationError
from events.mlflow_artifacts import (
    ArtifactPath,
    Listed,
    download_uri,
    list_directory,
    mlflow_source,
    parse_path,
)
from events.version_content import ArtifactEntry

SEGMENT = st.text(alphabet="abcdefgh_.-0123456789", min_size=1, max_size=6).filter(
    lambda s: s not in {".", ".."}
)
PATHS = st.lists(SEGMENT, min_size=1, max_size=4).map("/".join)
MANIFESTS = st.dictionaries(PATHS, st.integers(0, 10**12), max_size=30)


def test_the_download_uri_parses_back_to_the_version_root() -> None:
    # given the URI modelreg answers to get-download-uri
    uri = download_uri("churn", 3)
    assert uri == "mlflow-artifacts:/modelreg/models/churn/versions/3"
    # when MLflow asks for a path below it, then it names that model, version and file
    root = uri.removeprefix("mlflow-artifacts:/")
    assert parse_path(root) == ArtifactPath(model="churn", version="3", inner="")
    assert parse_path(f"/{root}/data/x.pkl").inner == "data/x.pkl"
    assert parse_path(f"{root}/data/").inner == "data"


def test_a_versions_mlflow_source_is_its_one_external_uri_else_the_artifact_uri() -> None:
    # given what MLflow's create records (one external artifact) and what modelreg stores
    external = ArtifactEntry(
        path="model", external=True, uri="s3://b/churn/7", sha256="a" * 64, size=1
    )
    stored = ArtifactEntry(path="MLmodel", sha256="b" * 64, size=1)
    # then the external one answers its URI, and anything else the files modelreg serves
    assert mlflow_source("churn", 7, [external]) == "s3://b/churn/7"
    assert mlflow_source("churn", 7, [stored]) == download_uri("churn", 7)
    assert mlflow_source("churn", 7, [external, stored]) == download_uri("churn", 7)
    assert mlflow_source("churn", 7, []) == download_uri("churn", 7)


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("", "pattern"),
        ("modelreg/models/churn", "pattern"),
        ("modelreg/models/churn/versions", "pattern"),
        ("modelreg/models//versions/1", "pattern"),
        ("modelreg/runs/churn/versions/1", "pattern"),
        ("other/models/churn/versions/1", "pattern"),
        ("modelreg/models/churn/aliases/1", "pattern"),
        ("modelreg/models/churn/versions/1/a/../b", "pattern"),
        ("modelreg/models/churn/versions/1/a//b", "pattern"),
        ("modelreg/models/churn/versions/1/a\\b", "pattern"),
        ("modelreg/models/churn/versions/1/a\u200bb", "invisible_character"),
    ],
)
def test_any_other_shape_is_refused_naming_path_and_rule(path: str, rule: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_path(path)
    assert (refused.value.field, refused.value.rule) == ("path", rule)


def test_a_directory_lists_its_children_once_sorted_with_sizes_for_files() -> None:
    files = [("b.txt", 2), ("a/x", 1), ("a/y/z", 3), ("c", 0)]
    assert list_directory(files, "") == [
        Listed("a", True),
        Listed("b.txt", False, 2),
        Listed("c", False, 0),
    ]
    assert list_directory(files, "a") == [Listed("x", False, 1), Listed("y", True)]
    # a file and a missing path list as empty; a name that only shares a prefix is not inside
    assert list_directory(files, "b.txt") == []
    assert list_directory(files, "a/y/z/w") == []
    assert list_directory([("ab/c", 1)], "a") == []


def walk(files: dict[str, int], directory: str) -> dict[str, int]:
    """Every file reachable from ``directory`` by listing, as MLflow's client walks it."""
    found: dict[str, int] = {}
    for item in list_directory(files.items(), directory):
        path = f"{directory}/{item.path}" if directory else item.path
        if item.is_dir:
            found |= walk(files, path)
        else:
            assert item.file_size is not None
            found[path] = item.file_size
    return found


@given(MANIFESTS)
def test_walking_the_listings_from_the_root_finds_exactly_the_manifest(
    files: dict[str, int],
) -> None:
    # A manifest where a path is both a file and a directory ("a" and "a/b") is left out:
    # MLflow's tree cannot show it either way.
    clashing = any(other.startswith(f"{path}/") for path in files for other in files)
    if not clashing:
        assert walk(files, "") == files


@given(MANIFESTS, PATHS)
def test_a_listing_never_names_anything_outside_the_manifest(
    files: dict[str, int], directory: str
) -> None:
    for item in list_directory(files.items(), directory):
        full = f"{directory}/{item.path}"
        if item.is_dir:
            assert any(path.startswith(f"{full}/") for path in files)
        else:
            assert files[full] == item.file_size
