"""The artifacts stream and the manifest rules: blobs recorded once per model, versions
naming only stored blobs unless external, artifact paths that read as what they are."""

from __future__ import annotations

import pytest

from events.artifacts import (
    ARTIFACTS,
    ArtifactsState,
    BlobStored,
    StoreBlob,
    check_manifest,
    decide,
    parse_digest,
)
from events.catalogue import decider_for
from events.envelope import encode_canonical
from events.errors import ConflictError, ValidationError
from events.streams import artifacts_stream, model_id_of, model_id_or_none, stream_type
from events.version_content import ArtifactEntry, VersionContent, validate_content
from tests.unit.domain_helpers import MODEL_ID, NOW

HEX = "3a" * 32


def _store(sha256: str = HEX, size: int = 10, model_id: str = MODEL_ID) -> StoreBlob:
    return StoreBlob(actor="alice", now=NOW, model_id=model_id, sha256=sha256, size=size)


def _stored(*events: BlobStored) -> ArtifactsState:
    return ARTIFACTS.fold(events)


def _entry(path: str = "model.bin", **fields: object) -> ArtifactEntry:
    values: dict[str, object] = {"sha256": HEX, "size": 10, **fields}
    return ArtifactEntry(path=path, **values)  # type: ignore[arg-type]


# --- the stream ---------------------------------------------------------------------------


def test_the_artifacts_stream_belongs_to_its_model_and_has_a_decider() -> None:
    stream = artifacts_stream(MODEL_ID)
    assert stream == f"artifacts:{MODEL_ID}"
    assert stream_type(stream) == "artifacts"
    assert model_id_of(stream) == MODEL_ID
    assert model_id_or_none(stream) == MODEL_ID
    assert decider_for(stream) is ARTIFACTS


def test_a_new_blob_is_recorded_with_its_digest_and_size() -> None:
    # given a model with no blobs; when one is stored
    events = decide(_store(), _stored())
    # then one event says which bytes, and the state knows them
    assert events == [BlobStored(model_id=MODEL_ID, sha256=HEX, size=10)]
    assert _stored(*events).blobs == {HEX: 10}


def test_storing_the_same_blob_again_records_nothing() -> None:
    # given a model that stored a blob
    state = _stored(BlobStored(model_id=MODEL_ID, sha256=HEX, size=10))
    # when the same bytes are stored again, then nothing new is recorded
    assert decide(_store(), state) == []


def test_the_same_digest_with_another_size_is_a_conflict_not_a_second_blob() -> None:
    state = _stored(BlobStored(model_id=MODEL_ID, sha256=HEX, size=10))
    with pytest.raises(ConflictError):
        decide(_store(size=11), state)


@pytest.mark.parametrize(
    ("command", "field", "rule"),
    [
        (_store(sha256="AB" * 32), "digest", "pattern"),
        (_store(sha256="ab"), "digest", "pattern"),
        (_store(size=-1), "size", "range"),
        (_store(model_id="a:b"), "model_id", "pattern"),
    ],
)
def test_a_malformed_blob_record_is_refused(command: StoreBlob, field: str, rule: str) -> None:
    with pytest.raises(ValidationError) as error:
        decide(command, _stored())
    assert (error.value.field, error.value.rule) == (field, rule)


@pytest.mark.parametrize(
    "text", ["3a" * 32, "sha256:" + "3A" * 32, "sha512:" + "3a" * 32, "sha256:" + "3a" * 31]
)
def test_a_digest_is_sha256_colon_and_64_lower_case_hex(text: str) -> None:
    with pytest.raises(ValidationError) as error:
        parse_digest(text)
    assert (error.value.field, error.value.rule) == ("digest", "pattern")
    assert parse_digest("sha256:" + HEX) == HEX


# --- the manifest rule ----------------------------------------------------------------------


def test_a_manifest_naming_stored_blobs_or_external_files_is_accepted() -> None:
    stored = {HEX: 10}
    external = _entry("README.md", sha256="b" * 64, external=True, uri="s3://b/README.md")
    check_manifest([_entry(), external], stored)


def test_a_manifest_naming_a_blob_the_model_has_not_stored_is_refused_naming_the_path() -> None:
    with pytest.raises(ValidationError) as error:
        check_manifest([_entry("a.bin", sha256="b" * 64), _entry("weights/w.bin")], {HEX: 10})
    refused = error.value
    assert (refused.field, refused.rule) == ("artifacts[0].sha256", "blob_not_stored")
    assert refused.details["path"] == "a.bin"
    assert "a.bin" in refused.message


def test_a_manifest_stating_another_size_than_the_stored_blob_is_refused() -> None:
    with pytest.raises(ValidationError) as error:
        check_manifest([_entry(size=11)], {HEX: 10})
    assert (error.value.field, error.value.rule) == ("artifacts[0].size", "blob_size")


def test_an_entry_with_a_uri_must_say_it_is_external() -> None:
    body = VersionContent(artifacts=(_entry(uri="file:///home/alice/out/model.bin"),))
    with pytest.raises(ValidationError) as error:
        validate_content(body)
    assert (error.value.field, error.value.rule) == (
        "content.artifacts[0].external",
        "external_marker",
    )


def test_an_external_entry_needs_a_uri_with_a_scheme() -> None:
    with pytest.raises(ValidationError) as error:
        validate_content(VersionContent(artifacts=(_entry(external=True),)))
    assert (error.value.field, error.value.rule) == ("content.artifacts[0].uri", "required")


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("a/../b", "pattern"),
        ("../b", "pattern"),
        ("/abs/b", "pattern"),
        ("a//b", "pattern"),
        ("./b", "pattern"),
        ("a\\b", "pattern"),
        ("model\x07.bin", "invisible_character"),
        ("model\n.bin", "invisible_character"),
        ("model\u202egnp.exe", "invisible_character"),  # right-to-left override
        ("mo\u200bdel.bin", "invisible_character"),  # zero-width space
        ("\ufeffmodel.bin", "invisible_character"),  # byte order mark
        ("model\u2028.bin", "invisible_character"),  # line separator
    ],
)
def test_artifact_paths_that_escape_or_hide_characters_are_refused(path: str, rule: str) -> None:
    with pytest.raises(ValidationError) as error:
        validate_content(VersionContent(artifacts=(_entry(path),)))
    assert (error.value.field, error.value.rule) == ("content.artifacts[0].path", rule)


def test_paths_in_other_scripts_are_fine() -> None:
    validate_content(VersionContent(artifacts=(_entry("modèles/模型/β.bin"),)))


def test_entries_recorded_before_the_external_marker_encode_as_before() -> None:
    # given an entry as recorded before the marker existed: a uri, no marker
    old = ArtifactEntry(path="model.pkl", uri="s3://b/model.pkl", sha256=HEX, size=10)
    # then its canonical bytes (which the content digest covers) are what they were
    assert encode_canonical(old) == (
        b'{"path":"model.pkl","sha256":"' + HEX.encode() + b'","size":10,"uri":"s3://b/model.pkl"}'
    )
