"""The Python client uploads big files through resumable upload sessions, against a real
``modelreg serve`` behind a proxy that cuts connections or loses answers: a chunk cut at
80% resumes from the server's offset and sends only the rest, never the file from zero,
and a commit whose answer was lost is not an error."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.client import Client, RetryPolicy
from service.client.resumable import THRESHOLD_VARIABLE
from tests.support.flaky_proxy import FlakyProxy, Seen
from tests.support.registry_server import RegistryServer, registry_server

FAST = RetryPolicy(attempts=4, backoff=0.05, max_backoff=0.2)
THRESHOLD = 1024 * 1024  # MODELREG_RESUMABLE_FROM here: files from 1 MiB use a session
BIG = os.urandom(4 * 1024 * 1024 + 7)
SMALL = b'{"lr": 0.1}'


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


@pytest.fixture(autouse=True)
def low_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THRESHOLD_VARIABLE, str(THRESHOLD))


def model_dir(root: Path) -> Path:
    root.mkdir()
    (root / "model.bin").write_bytes(BIG)
    (root / "config.json").write_bytes(SMALL)
    return root


def start_of(chunk: Seen) -> int:
    content_range = chunk.header("Content-Range")
    assert content_range is not None
    return int(content_range.split("-")[0])


def test_a_big_file_cut_at_80_percent_resumes_from_the_servers_offset(
    server: RegistryServer, tmp_path: Path
) -> None:
    out = model_dir(tmp_path / "out")
    with FlakyProxy(server.url) as proxy, Client(proxy.url, server.admin_token, retry=FAST) as reg:
        reg.create_model("resumed")
        # given a proxy that cuts the first chunk's connection at 80%
        proxy.cut_requests(1, after=0.8, match=b"PATCH ")

        # when the directory is registered
        done = reg.register_version("resumed", artifacts_dir=out, code=None, dependencies=None)

        # then both files are stored, the big one through a session, the small one by a PUT
        assert sorted((f.path, f.action) for f in done.files) == [
            ("config.json", "uploaded"),
            ("model.bin", "uploaded"),
        ]
        assert len(proxy.seen("POST /api/v1/models/resumed/uploads ")) == 1
        assert [len(p.body) for p in proxy.seen("PUT /api/v1/models/resumed/blobs/")] == [
            len(SMALL)
        ]
        # the cut chunk got no answer; the server took the rest from where it said it stood:
        # past zero (the bytes before the cut were kept), no further than was forwarded
        chunks = proxy.seen("PATCH ")
        assert (start_of(chunks[0]), chunks[0].status) == (0, None)
        accepted = [chunk for chunk in chunks if chunk.status == 202]
        resumed_at = start_of(accepted[0])
        assert 0 < resumed_at <= len(BIG) * 8 // 10
        # and after the cut only the rest of the file was taken, each byte once
        assert sum(len(chunk.body) for chunk in accepted) == len(BIG) - resumed_at

        # and the version's file downloads as the original bytes
        reg.download("resumed", done.version, tmp_path / "m")
    assert (tmp_path / "m" / "model.bin").read_bytes() == BIG


def test_a_commit_whose_answer_was_lost_is_not_an_error(
    server: RegistryServer, tmp_path: Path
) -> None:
    out = model_dir(tmp_path / "out")
    with FlakyProxy(server.url) as proxy, Client(proxy.url, server.admin_token, retry=FAST) as reg:
        reg.create_model("lost")
        # given a server whose answer to the commit is lost after it stored the blob
        proxy.drop_responses(1, match=b"PUT /api/v1/models/lost/uploads/")

        # when the directory is registered
        done = reg.register_version("lost", artifacts_dir=out, code=None, dependencies=None)

        # then the retried commit found the session gone, and the blob stored: no error
        commits = proxy.seen("PUT /api/v1/models/lost/uploads/")
        assert [c.status for c in commits] == [201, 404]
        assert len(proxy.dropped) == 1
        reg.download("lost", done.version, tmp_path / "m")
    sha256 = hashlib.sha256(BIG).hexdigest()
    assert hashlib.sha256((tmp_path / "m" / "model.bin").read_bytes()).hexdigest() == sha256
