"""Single HTTP byte ranges for downloads, and choosing the blob store from settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.artifacts.configure import blob_store_from
from service.artifacts.local import LocalBlobStore
from service.artifacts.ranges import UnsatisfiableRangeError, byte_range
from service.artifacts.s3 import S3BlobStore
from service.settings import SettingsError, load_settings

ETAG = '"sha256:ab"'


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 10)),
        ("bytes=90-", (90, 100)),
        ("bytes=90-500", (90, 100)),
        ("bytes=-10", (90, 100)),
        ("bytes=-500", (0, 100)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-9", None),
        ("bytes=9-3", None),  # invalid: ignored
        ("bytes=-", None),
    ],
)
def test_a_single_byte_range_is_honoured_and_anything_else_means_the_whole_file(
    header: str | None, expected: tuple[int, int] | None
) -> None:
    assert byte_range(header, 100, if_range=None, etag=ETAG) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-200", "bytes=-0"])
def test_a_range_past_the_end_is_unsatisfiable(header: str) -> None:
    with pytest.raises(UnsatisfiableRangeError):
        byte_range(header, 100, if_range=None, etag=ETAG)


def test_if_range_with_another_validator_means_the_whole_file() -> None:
    assert byte_range("bytes=0-9", 100, if_range='"sha256:cd"', etag=ETAG) is None
    assert byte_range("bytes=0-9", 100, if_range=ETAG, etag=ETAG) == (0, 10)


def test_the_default_store_is_files_under_the_data_dir(tmp_path: Path) -> None:
    store = blob_store_from(load_settings({"MODELREG_DATA_DIR": str(tmp_path)}))
    assert isinstance(store, LocalBlobStore)
    assert store.path_of("ab" * 32) == tmp_path / "blobs" / "sha256" / "ab" / ("ab" * 32)


def test_the_store_follows_modelreg_artifacts_url(tmp_path: Path) -> None:
    elsewhere = blob_store_from(load_settings({"MODELREG_ARTIFACTS_URL": f"file://{tmp_path}"}))
    assert isinstance(elsewhere, LocalBlobStore)
    assert elsewhere.root == tmp_path
    s3 = blob_store_from(load_settings({"MODELREG_ARTIFACTS_URL": "s3://models/registry"}))
    assert isinstance(s3, S3BlobStore)


@pytest.mark.parametrize("url", ["ftp://host/x", "s3://", "models/registry"])
def test_an_artifacts_url_of_no_known_kind_is_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(SettingsError, match="MODELREG_ARTIFACTS_URL"):
        blob_store_from(load_settings({"MODELREG_ARTIFACTS_URL": url}))
