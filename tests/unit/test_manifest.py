"""The artifact manifest builder: paths, sizes and sha256 of local files, streamed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.client.manifest import ManifestError, build_manifest, list_files, sha256_file


def write(root: Path, relative: str, data: bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_every_file_is_listed_by_relative_posix_path_with_its_size_and_digest(
    tmp_path: Path,
) -> None:
    files = {
        "model.pkl": b"weights" * 1000,
        "config/params.json": b'{"lr": 0.1}',
        "config/a/b.txt": b"",
        "z.bin": b"z",
    }
    for relative, data in files.items():
        write(tmp_path, relative, data)

    manifest = build_manifest(tmp_path)

    assert [a.path for a in manifest] == sorted(files)
    for entry in manifest:
        data = files[entry.path]
        assert entry.size == len(data)
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
        assert entry.uri == (tmp_path / entry.path).resolve().as_uri()


def test_a_storage_uri_prefixes_each_path_percent_encoded(tmp_path: Path) -> None:
    write(tmp_path, "dir/my model.bin", b"x")
    write(tmp_path, "top.txt", b"y")

    manifest = build_manifest(tmp_path, uri="s3://models/churn/7/")

    assert [a.uri for a in manifest] == [
        "s3://models/churn/7/dir/my%20model.bin",
        "s3://models/churn/7/top.txt",
    ]


def test_large_files_are_hashed_in_chunks_and_report_progress(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4099  # not a multiple of the chunk size
    path = write(tmp_path, "big.bin", data)
    advanced: list[int] = []

    digest, size = sha256_file(path, advanced.append, chunk_size=1000)

    assert (digest, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert (
        sum(advanced) == len(data)
        and max(advanced) == 1000
        and len(advanced) == -(-len(data) // 1000)
    )
    # the progress bar itself draws on stderr and changes nothing in the result
    assert build_manifest(tmp_path, progress=True, chunk_size=1000) == build_manifest(
        tmp_path, progress=False
    )


def test_vcs_and_cache_directories_and_excluded_patterns_are_left_out(tmp_path: Path) -> None:
    for relative in (
        "model.pkl",
        ".git/HEAD",
        "pkg/__pycache__/x.pyc",
        "logs/run.log",
        "tmp.tmp",
        "keep/tmp.txt",
    ):
        write(tmp_path, relative, b"1")

    assert [p for p, _ in list_files(tmp_path)] == [
        "keep/tmp.txt",
        "logs/run.log",
        "model.pkl",
        "tmp.tmp",
    ]
    assert [
        a.path for a in build_manifest(tmp_path, exclude=(".git", "__pycache__", "*.tmp", "logs/*"))
    ] == [
        "keep/tmp.txt",
        "model.pkl",
    ]


def test_a_single_file_is_a_manifest_of_one(tmp_path: Path) -> None:
    path = write(tmp_path, "nested/model.onnx", b"onnx")

    (entry,) = build_manifest(path)

    assert (entry.path, entry.size) == ("model.onnx", 4)


def test_symlinked_files_are_read_through_and_symlinked_directories_not_followed(
    tmp_path: Path,
) -> None:
    root = tmp_path / "pkg"
    write(root, "real/model.bin", b"abc")
    (root / "link.bin").symlink_to(root / "real" / "model.bin")
    (root / "loop").symlink_to(root, target_is_directory=True)

    manifest = build_manifest(root)

    assert [(a.path, a.size) for a in manifest] == [("link.bin", 3), ("real/model.bin", 3)]


def test_nothing_to_register_is_an_error_naming_the_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    with pytest.raises(ManifestError, match="no files"):
        build_manifest(tmp_path / "empty")
    with pytest.raises(ManifestError, match="no such file"):
        build_manifest(tmp_path / "missing")
