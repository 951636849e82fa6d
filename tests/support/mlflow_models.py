"""A tiny MLflow pyfunc model, and the real ``mlflow`` library run against a modelreg
server the way a user runs it: in a process of its own, configured by MLFLOW_* variables.

MLflow runs in subprocesses, not in the test process: importing it emits warnings that the
suite turns into errors, and its tracking and registry URIs are process-wide state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from service.client import Client
from tests.support.registry_server import RegistryServer

# "Models from code" (MLflow 3's way): the class travels as source, not as a pickle, so
# loading and serving need nothing from this repository on their path. The factor comes
# from an artifact, so the package has a sub-directory to list and fetch.
MODEL_CODE = """\
import mlflow
from mlflow.pyfunc import PythonModel


class Doubler(PythonModel):
    def load_context(self, context):
        with open(context.artifacts["factor"]) as handle:
            self.factor = float(handle.read())

    def predict(self, model_input: list[float]) -> list[float]:
        return [self.factor * x for x in model_input]


mlflow.models.set_model(Doubler())
"""

SAVE = """\
import sys
import mlflow.pyfunc

work, out = sys.argv[1], sys.argv[2]
mlflow.pyfunc.save_model(
    out,
    python_model=f"{work}/model_code.py",
    artifacts={"factor": f"{work}/factor.txt"},
)
"""

LOAD_AND_PREDICT = """\
import json
import sys
import mlflow.pyfunc

model = mlflow.pyfunc.load_model(sys.argv[1])
print(json.dumps(model.predict(json.loads(sys.argv[2]))))
"""

FACTOR = 2.0


def save_model(work: Path) -> Path:
    """A pyfunc model saved by ``mlflow.pyfunc.save_model`` into ``work/model``."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "model_code.py").write_text(MODEL_CODE)
    (work / "factor.txt").write_text(str(FACTOR))
    out = work / "model"
    subprocess.run(
        [sys.executable, "-c", SAVE, str(work), str(out)],
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        check=True,
        capture_output=True,
    )
    return out


def register_directory(url: str, token: str, model: str, directory: Path) -> int:
    """Register a version of ``model`` holding the files of ``directory``, uploaded by
    modelreg's Python client (stored, not external); return its number."""
    with Client(url, token, progress=False) as client:
        registered = client.register_version(
            model, artifacts_dir=directory, code=None, dependencies=None
        )
    return registered.version


def mlflow_env(
    server: RegistryServer, token: str | None = None, *, basic: bool = False
) -> dict[str, str]:
    """The environment an MLflow user sets to talk to this modelreg: tracking and registry
    URI, and the token as MLFLOW_TRACKING_TOKEN or as the Basic password."""
    secret = token or server.admin_token
    auth = (
        {"MLFLOW_TRACKING_USERNAME": "ci", "MLFLOW_TRACKING_PASSWORD": secret}
        if basic
        else {"MLFLOW_TRACKING_TOKEN": secret}
    )
    return server.env(
        MLFLOW_TRACKING_URI=server.url,
        MLFLOW_REGISTRY_URI=server.url,
        # A failing call fails the test now, not after MLflow's seven retries with back-off.
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        # Tests talk to no one else: MLflow sends usage telemetry to the internet otherwise.
        MLFLOW_DISABLE_TELEMETRY="true",
        **auth,
    )


def load_and_predict(
    uri: str, inputs: list[float], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``mlflow.pyfunc.load_model(uri).predict(inputs)`` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, uri, json.dumps(inputs)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
