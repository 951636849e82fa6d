"""MLflow's artifact proxy API, read side: ``/api/2.0/mlflow-artifacts/artifacts``, so that
``mlflow.pyfunc.load_model("models:/churn@champion")`` and ``mlflow models serve`` fetch
the files modelreg stores for a version (paths in ``events.mlflow_artifacts``).

    GET  .../artifacts?path=modelreg/models/churn/versions/3[/dir]   list one directory
    GET  .../artifacts/modelreg/models/churn/versions/3/MLmodel       download one file

Downloads go through the same service functions as ``/api/v1``'s file download (every
byte re-hashed on the way out; a corrupt blob cuts the response). Authentication is the
API's token, as Bearer (``MLFLOW_TRACKING_TOKEN``) or as the password of HTTP Basic
(``MLFLOW_TRACKING_USERNAME``/``PASSWORD``); reading needs READ on the model, within the
token's scopes. Errors use MLflow's envelope, ``{"error_code", "message"}`` (plus
``field`` and ``rule`` when a parameter is at fault), with MLflow's status for each code.

Writes are refused: modelreg takes model files through its own upload API, which records
who stored what; MLflow's run-artifact uploads have no version to belong to.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream
from litestar.types import ExceptionHandlersMap

from events.access import Permission
from events.errors import ValidationError
from events.mlflow_artifacts import PATH_FIELD, Listed, list_directory, parse_path
from events.model.decider import MODEL
from events.model.state import VersionState
from events.streams import model_stream
from service.api.auth import require
from service.api.common import principal_of, services_of
from service.api.problems import EXCEPTION_HANDLERS, Problem
from service.artifacts.blobstore import BlobStoreUnavailableError, verified_read
from service.artifacts.service import find_file, resolve_version

MLFLOW_ARTIFACTS_PREFIX = "/api/2.0/mlflow-artifacts"
UPLOADS = "/api/v1/models/{name}/blobs/sha256:{hex}"


class MlflowError(msgspec.Struct, frozen=True, omit_defaults=True):
    """MLflow's error envelope; ``field`` and ``rule`` are modelreg's, and MLflow's
    clients ignore members they do not know."""

    error_code: str
    message: str
    field: str | None = None
    rule: str | None = None


class FileInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    path: str
    is_dir: bool
    file_size: int | None = None


class Listing(msgspec.Struct, frozen=True):
    files: list[FileInfo]


# The HTTP status modelreg gives a problem -> MLflow's error code and the status MLflow
# uses for it (ERROR_CODE_TO_HTTP_STATUS in mlflow/exceptions.py): a 422 is MLflow's 400.
_CODES: dict[int, tuple[str, int]] = {
    400: ("INVALID_PARAMETER_VALUE", 400),
    401: ("UNAUTHENTICATED", 401),
    403: ("PERMISSION_DENIED", 403),
    404: ("RESOURCE_DOES_NOT_EXIST", 404),
    405: ("NOT_IMPLEMENTED", 405),
    409: ("RESOURCE_CONFLICT", 409),
    412: ("RESOURCE_CONFLICT", 409),
    413: ("INVALID_PARAMETER_VALUE", 400),
    415: ("INVALID_PARAMETER_VALUE", 400),
    422: ("INVALID_PARAMETER_VALUE", 400),
    429: ("REQUEST_LIMIT_EXCEEDED", 429),
    503: ("TEMPORARILY_UNAVAILABLE", 503),
}


def _as_mlflow(problem: Problem, headers: dict[str, str]) -> Response[MlflowError]:
    code, status = _CODES.get(problem.status, ("INTERNAL_ERROR", 500))
    return Response(
        MlflowError(
            error_code=code, message=problem.detail, field=problem.field, rule=problem.rule
        ),
        status_code=status,
        headers=headers,
    )


def mlflow_error(request: Request[Any, Any, Any], exc: Exception) -> Response[MlflowError]:
    """Whatever /api/v1 answers for ``exc`` (the one mapping of errors: domain, request,
    auth, outage with Retry-After), told in MLflow's envelope."""
    handler = next(EXCEPTION_HANDLERS[c] for c in type(exc).__mro__ if c in EXCEPTION_HANDLERS)
    answer = handler(request, exc)
    headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-type"}
    if isinstance(answer.content, Problem):
        return _as_mlflow(answer.content, headers)
    return Response(  # every handler answers a Problem; this keeps an odd one an error
        MlflowError(error_code="INTERNAL_ERROR", message="unexpected error"), status_code=500
    )


def _blob_store_unavailable(
    request: Request[Any, Any, Any], exc: BlobStoreUnavailableError
) -> Response[MlflowError]:
    return Response(
        MlflowError(
            error_code="TEMPORARILY_UNAVAILABLE",
            message="the blob store did not answer; retry later",
        ),
        status_code=503,
        headers={"Retry-After": "5"},
    )


def _refuse_writes() -> Response[MlflowError]:
    return Response(
        MlflowError(
            error_code="NOT_IMPLEMENTED",
            message=(
                "modelreg serves model files to MLflow read-only: store files with "
                f"PUT {UPLOADS} (or modelreg's client and CLI), then register the version; "
                "see docs/artifacts.md"
            ),
        ),
        status_code=405,
        headers={"Allow": "GET"},
    )


async def _version(request: Request[Any, Any, Any], model: str, ref: str) -> VersionState:
    require(principal_of(request), Permission.READ, model)
    registry = services_of(request).registry
    # One query (id and stream version), then the executor's cached state when it is at
    # that version: MLflow fetches a model's files in a burst of small requests.
    model_id, stream_version = await registry.locate(model)
    state = await registry.executor.state_at(model_stream(model_id), MODEL, stream_version)
    return resolve_version(state, ref)


class MlflowArtifactsController(Controller):
    path = "/artifacts"

    @get("/")
    async def list_files(
        self,
        request: Request[Any, Any, Any],
        directory: Annotated[str | None, QueryParameter(name="path")] = None,
    ) -> Listing:
        """The entries directly under ``path``; empty when it names a file or nothing."""
        if directory is None:
            raise ValidationError(PATH_FIELD, "required", "give the directory to list as ?path=")
        where = parse_path(directory)
        version = await _version(request, where.model, where.version)
        files = ((e.path, e.size) for e in version.content.artifacts)
        return Listing(files=[_file_info(x) for x in list_directory(files, where.inner)])

    @get("/{artifact_path:path}")
    async def download(
        self, request: Request[Any, Any, Any], artifact_path: FromPath[str]
    ) -> Stream:
        """One file of a version, streamed and re-hashed on the way out."""
        where = parse_path(artifact_path)
        if not where.inner:
            raise ValidationError(
                PATH_FIELD, "file", "name a file of the version; list a directory with ?path="
            )
        version = await _version(request, where.model, where.version)
        entry = find_file(version, where.inner)
        services = services_of(request)
        return Stream(
            verified_read(services.blobs, entry.sha256, entry.size, 0, entry.size),
            media_type="application/octet-stream",
            headers={"Content-Length": str(entry.size), "ETag": f'"sha256:{entry.sha256}"'},
        )

    @put("/{artifact_path:path}", request_max_body_size=None)
    async def upload(self, artifact_path: FromPath[str]) -> Response[MlflowError]:
        """Refused (405): files come in through modelreg's upload API."""
        return _refuse_writes()

    @delete("/{artifact_path:path}", status_code=405)
    async def remove(self, artifact_path: FromPath[str]) -> Response[MlflowError]:
        """Refused (405): a registered version's files never change."""
        return _refuse_writes()


class MlflowMultipartController(Controller):
    path = "/mpu"

    @post("/{action:path}")
    async def multipart(self, action: FromPath[str]) -> Response[MlflowError]:
        """MLflow's multipart uploads: refused (405) like single uploads."""
        return _refuse_writes()


def _file_info(entry: Listed) -> FileInfo:
    return FileInfo(path=entry.path, is_dir=entry.is_dir, file_size=entry.file_size)


def mlflow_exception_handlers() -> ExceptionHandlersMap:
    """Every error the API knows, answered in MLflow's envelope."""
    handlers: ExceptionHandlersMap = dict.fromkeys(EXCEPTION_HANDLERS, mlflow_error)
    handlers[BlobStoreUnavailableError] = _blob_store_unavailable
    return handlers


MLFLOW_ARTIFACT_CONTROLLERS = [MlflowArtifactsController, MlflowMultipartController]
