"""The deployment agent's pure parts: resource names, the storage URI rule and the YAML it
writes (parsed back with PyYAML, so quoting can never change the document's structure)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from events.stages import Stage
from service.client.models import ArtifactEntry, VersionContent, VersionRow
from service.consumers.deploy_agent import (
    NAME_MAX,
    AgentConfig,
    Desire,
    RenderError,
    deployment_id_for,
    package_root,
    render_manifest,
    resource_name,
    storage_uri,
)

T0 = datetime(2026, 3, 3, tzinfo=UTC)
EVENT = uuid.UUID("0193e0a4-5b7c-7d2e-9f00-1234567890ab")


def entry(path: str, uri: str) -> ArtifactEntry:
    return ArtifactEntry(path=path, external=True, uri=uri, sha256="a" * 64, size=1)


def version(
    *artifacts: ArtifactEntry, tags: dict[str, str] | None = None, name: str = "churn"
) -> VersionRow:
    return VersionRow(
        model_id="01JQ3M8Z6X9V2K4T7R5N1P0WCH",
        model_name=name,
        version=3,
        stage=Stage.PRODUCTION,
        stage_since=T0,
        aliases=(),
        description="",
        tags=tags or {},
        content=VersionContent(artifacts=artifacts),
        content_digest="sha256:" + "9f" * 32,
        registered_by="alice",
        deprecated=False,
        deprecation_reason="",
        deprecated_at=None,
        owner="alice",
        model_archived=False,
        created_at=T0,
        updated_at=T0,
        position=40,
    )


def test_resource_names_are_dns_labels_readable_when_possible_and_distinct_when_not() -> None:
    assert resource_name("churn", "prod") == "churn-prod"
    assert resource_name("churn", "prod", "champion") == "churn-champion-prod"
    made_safe = [
        resource_name(m, "prod") for m in ("Churn", "churn_v2", "churn.v2", "9lives", "x" * 80)
    ]
    for name in made_safe:
        assert (
            len(name) <= NAME_MAX
            and name[0].isalpha()
            and set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
        )
    assert made_safe[1] != made_safe[2] != resource_name("churn-v2", "prod") == "churn-v2-prod"


def test_the_storage_uri_is_the_prefix_every_artifact_shares() -> None:
    assert (
        package_root(
            [
                entry("model.joblib", "s3://m/churn/3/model.joblib"),
                entry("conf/a b.json", "s3://m/churn/3/conf/a%20b.json"),
            ]
        )
        == "s3://m/churn/3"
    )
    assert (
        package_root([entry("model.joblib", "gs://elsewhere/blob-17")]) == "gs://elsewhere/blob-17"
    )
    assert package_root([entry("a", "s3://one/a"), entry("b", "s3://two/b")]) is None

    assert storage_uri(version(entry("m.pt", "s3://m/3/m.pt"))) == "s3://m/3"
    with pytest.raises(RenderError, match="which a cluster cannot pull from"):
        storage_uri(version(entry("m.pt", "file:///home/alice/out/m.pt")))
    with pytest.raises(RenderError, match="not under one storage prefix"):
        storage_uri(version(entry("a", "s3://one/a"), entry("b", "s3://two/b")))
    tagged = version(
        entry("m.pt", "file:///tmp/m.pt"), tags={"serving.uri": "pvc://models/churn/3"}
    )
    assert storage_uri(tagged, "tag:serving.uri") == "pvc://models/churn/3"
    with pytest.raises(RenderError, match="no tag 'other'"):
        storage_uri(tagged, "tag:other")


def test_the_manifest_parses_back_to_exactly_what_was_meant() -> None:
    awkward = 'x: "y" # z\n\u0085\u2028\u2029\x7f\ufeff é ✓'
    row = version(entry("m.pt", "s3://m/3/m.pt"), tags={"model_format": awkward})
    config = AgentConfig(out=Path("out"), namespace="ml")
    desire = Desire(model_id=row.model_id, version=3, stage=Stage.PRODUCTION)
    text = render_manifest(
        config,
        row,
        desire,
        name="churn-prod",
        deployment_id=deployment_id_for(EVENT, "prod", "k"),
        event_id=EVENT,
        log_position=42,
    )
    document = yaml.safe_load(text)
    assert document["spec"]["predictor"]["model"] == {
        "modelFormat": {"name": awkward},
        "storageUri": "s3://m/3",
    }
    assert document["metadata"]["namespace"] == "ml"
    assert document["metadata"]["annotations"]["modelreg.io/log-position"] == "42"
    # deterministic: the same event renders the same bytes (what lets a replay leave the file alone)
    assert text == render_manifest(
        config,
        row,
        desire,
        name="churn-prod",
        deployment_id=deployment_id_for(EVENT, "prod", "k"),
        event_id=EVENT,
        log_position=42,
    )

    with pytest.raises(RenderError, match="no model_format tag"):
        render_manifest(
            config,
            version(entry("m.pt", "s3://m/3/m.pt")),
            desire,
            name="n",
            deployment_id="d",
            event_id=EVENT,
            log_position=1,
        )


def test_one_deployment_id_per_event_and_place() -> None:
    assert deployment_id_for(EVENT, "prod", "k8s") == deployment_id_for(EVENT, "prod", "k8s")
    assert (
        len(
            {
                deployment_id_for(EVENT, "prod", "k8s"),
                deployment_id_for(EVENT, "prod", "k8s/champion"),
                deployment_id_for(EVENT, "staging", "k8s"),
                deployment_id_for(uuid.uuid4(), "prod", "k8s"),
            }
        )
        == 4
    )


# --- versions whose files the registry stores ---------------------------------------------

REGISTRY = "https://registry.example:8080"


def stored(path: str, sha256: str = "b" * 64) -> ArtifactEntry:
    return ArtifactEntry(path=path, sha256=sha256, size=10)


def render(config: AgentConfig, row: VersionRow) -> dict[str, object]:
    text = render_manifest(
        config,
        row,
        Desire(model_id=row.model_id, version=3, stage=Stage.PRODUCTION),
        name="churn-prod",
        deployment_id="d1",
        event_id=EVENT,
        log_position=41,
    )
    document: dict[str, object] = yaml.safe_load(text)
    return document


def uri_of(document: dict[str, object]) -> object:
    return document["spec"]["predictor"]["model"]["storageUri"]  # type: ignore[index]


def test_a_stored_single_file_is_fetched_from_the_registry_files_route(tmp_path: Path) -> None:
    # given a version whose one file the registry stores
    row = version(stored("weights/model.joblib"), tags={"model_format": "sklearn"}, name="churn v2")
    config = AgentConfig(out=tmp_path, registry_url=REGISTRY + "/")

    # then KServe is pointed at the registry's download of that file (the name quoted)
    assert uri_of(render(config, row)) == (
        f"{REGISTRY}/api/v1/models/churn%20v2/versions/3/files/weights/model.joblib"
    )


def test_stored_files_are_fetched_as_one_zip_kserve_unpacks(tmp_path: Path) -> None:
    # given a version of two stored files
    row = version(stored("model.joblib"), stored("conda.yaml", "c" * 64))
    config = AgentConfig(out=tmp_path, registry_url=REGISTRY, model_format="sklearn")

    # then the URI is the registry's archive as a zip, its name ending in .zip
    uri = uri_of(render(config, row))
    assert (
        uri == f"{REGISTRY}/api/v1/models/churn/versions/3/archive?format=zip&filename=churn-3.zip"
    )


def test_a_one_file_version_can_point_at_its_blob_in_the_s3_store(tmp_path: Path) -> None:
    # given an agent told to read the S3 store directly
    config = AgentConfig(
        out=tmp_path,
        storage_uri_from="blobs",
        blobs_url="s3://models/registry/",
        model_format="sklearn",
    )

    # then a one-file version is its blob's key; several files cannot be one blob
    sha = "d" * 64
    assert uri_of(render(config, version(stored("model.joblib", sha)))) == (
        f"s3://models/registry/blobs/sha256/dd/{sha}"
    )
    with pytest.raises(RenderError, match="2 files"):
        render(config, version(stored("a"), stored("b", "c" * 64)))


def test_stored_files_without_a_registry_url_cannot_render_and_blobs_need_an_s3_store(
    tmp_path: Path,
) -> None:
    config = AgentConfig(out=tmp_path, model_format="sklearn")
    with pytest.raises(RenderError, match="--registry-url"):
        render(config, version(stored("model.joblib")))
    with pytest.raises(ValueError, match="s3://"):
        AgentConfig(out=tmp_path, storage_uri_from="blobs", blobs_url="file:///srv/blobs")


def test_external_files_keep_their_own_location(tmp_path: Path) -> None:
    # given a registry URL, and a version whose files are external
    config = AgentConfig(out=tmp_path, registry_url=REGISTRY, model_format="sklearn")
    row = version(entry("model.joblib", "s3://m/churn/3/model.joblib"))

    # then the manifest points at the prefix they share, not at the registry
    assert uri_of(render(config, row)) == "s3://m/churn/3"
