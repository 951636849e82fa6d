"""The real ``mlflow`` library loads and serves a model whose files modelreg stores: a pyfunc
model saved by ``mlflow.pyfunc.save_model``, uploaded to a running ``modelreg serve`` and
registered, then fetched through modelreg's MLflow artifact API by MLflow's own client."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from events.mlflow_artifacts import download_uri
from service.artifacts.blobstore import blob_key
from tests.support.mlflow_models import (
    FACTOR,
    load_and_predict,
    mlflow_env,
    register_directory,
    save_model,
)
from tests.support.registry_server import RegistryServer, registry_server
from tests.support.waiting import eventually_sync

M = "/api/v1/models"
INPUTS = [1.0, 2.5, -4.0]
EXPECTED = [FACTOR * x for x in INPUTS]


@pytest.fixture(scope="module")
def server(database_url: str, nats_url: str, workdir: Path) -> Iterator[RegistryServer]:
    with registry_server(database_url, nats_url, workdir) as running:
        yield running


@pytest.fixture(scope="module")
def model_dir(workdir: Path) -> Path:
    return save_model(workdir / "mlflow-model")


def admin(server: RegistryServer) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=30
    )


@pytest.fixture(scope="module")
def churn(server: RegistryServer, model_dir: Path) -> int:
    """churn v1: the saved model's files, uploaded and registered; alias champion."""
    with admin(server) as http:
        assert http.post(M, json={"name": "churn"}).status_code == 201
        assert http.post(M, json={"name": "fraud"}).status_code == 201
    number = register_directory(server.url, server.admin_token, "churn", model_dir)
    with admin(server) as http:
        moved = http.put(f"{M}/churn/aliases/champion", json={"version": number})
        assert moved.status_code == 200, moved.text
    return number


def predictions(result: subprocess.CompletedProcess[str]) -> list[float]:
    assert result.returncode == 0, result.stderr[-3000:]
    answer: list[float] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


@pytest.mark.parametrize("basic", [False, True], ids=["tracking-token", "basic-auth"])
def test_mlflow_loads_a_registered_version_from_its_download_uri_and_predicts(
    server: RegistryServer, churn: int, workdir: Path, basic: bool
) -> None:
    # given the URI modelreg gives MLflow for churn v1, and MLflow pointed at modelreg
    uri = download_uri("churn", churn)
    env = mlflow_env(server, basic=basic)
    # when MLflow loads the model from it (listing, downloading every file) and predicts
    result = load_and_predict(uri, INPUTS, env, workdir)
    # then it answers as the model saved on disk does
    assert predictions(result) == EXPECTED


@pytest.mark.parametrize("uri", ["models:/churn@champion", "models:/churn/1"])
def test_mlflow_loads_a_registered_model_by_alias_and_by_number(
    server: RegistryServer, churn: int, workdir: Path, uri: str
) -> None:
    # given the registry URI set to modelreg: MLflow resolves the alias or number through
    # modelreg's registry API, then fetches the files from its download URI
    assert churn == 1
    result = load_and_predict(uri, INPUTS, mlflow_env(server), workdir)
    assert predictions(result) == EXPECTED


def test_mlflow_models_serve_serves_a_registered_version(
    server: RegistryServer, churn: int, workdir: Path
) -> None:
    # given `mlflow models serve -m models:/churn/1` started against modelreg
    port = _free_port()
    exe = Path(sys.executable).parent / "mlflow"
    log = workdir / "mlflow-serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(exe),
                "models",
                "serve",
                "-m",
                f"models:/churn/{churn}",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env=mlflow_env(server),
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        eventually_sync(
            lambda: _pinged(proc, url, log), what="mlflow models serve answers /ping", timeout=180
        )
        # when a prediction is asked for over HTTP, then the registered model answers
        answer = httpx.post(f"{url}/invocations", json={"inputs": INPUTS}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"predictions": EXPECTED}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_a_token_scoped_to_another_model_cannot_load_it(
    server: RegistryServer, churn: int, workdir: Path
) -> None:
    # given a reader token scoped to fraud
    with admin(server) as http:
        issued = http.post(
            "/api/v1/tokens", json={"principal": "fred", "roles": ["reader"], "scopes": ["fraud"]}
        )
        assert issued.status_code == 201, issued.text
    env = mlflow_env(server, issued.json()["secret"])
    # when it loads churn through MLflow, then MLflow fails on modelreg's refusal
    result = load_and_predict(download_uri("churn", churn), INPUTS, env, workdir)
    assert result.returncode != 0
    assert "PERMISSION_DENIED" in result.stderr or "403" in result.stderr, result.stderr[-3000:]


def test_a_corrupted_file_fails_the_mlflow_download(
    server: RegistryServer, model_dir: Path, workdir: Path
) -> None:
    # given another model with the same files, its factor then altered on disk to one of
    # the same length (unchecked bytes would load and predict 3x instead of failing)
    with admin(server) as http:
        assert http.post(M, json={"name": "rot"}).status_code == 201
    number = register_directory(server.url, server.admin_token, "rot", model_dir)
    factor = (model_dir / "artifacts" / "factor.txt").read_bytes()
    assert factor == b"2.0"
    blob = server.log.parent / blob_key(hashlib.sha256(factor).hexdigest())
    blob.chmod(0o644)
    try:
        blob.write_bytes(b"3.0")
        # when MLflow loads it, then the cut download fails it instead of loading bad bytes
        result = load_and_predict(download_uri("rot", number), INPUTS, mlflow_env(server), workdir)
        assert result.returncode != 0, result.stdout
        assert "factor.txt" in result.stderr, result.stderr[-3000:]
    finally:
        blob.write_bytes(factor)  # the blob store is shared by churn's version too


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pinged(proc: subprocess.Popen[bytes], url: str, log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"mlflow models serve exited {proc.returncode}:\n{log.read_text()}")
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(f"{url}/ping", timeout=2).status_code == 200
    return False
