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
``field`` and ``rule`` when a parameter is at fault), with MLflow's status for each code
(``service.api.mlflow``'s authentication and error mapping, shared with the registry
routes). What MLflow's registry API hides (an archived model, a deprecated version, which
MLflow calls deleted) is not found here either.

Writes are refused: modelreg takes model files through its own upload API, which records
who stored what; MLflow's run-artifact uploads have no version to belong to.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, Router, delete, get, post, put
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream
from litestar.types import ExceptionHandlersMap

from events.access import Permission
from events.errors import NotFoundError, ValidationError
from events.mlflow_artifacts import PATH_FIELD, Listed, list_directory, parse_path
from events.model.state import VersionState
from service.api.auth import require
from service.api.common import principal_of, services_of
from service.api.edge import edge
from service.api.mlflow.auth import secret_of
from service.api.mlflow.errors import MLFLOW_EXCEPTION_HANDLERS, MlflowError
from service.api.mlflow.shared import no_model, no_version
from service.artifacts.blobstore import (
    INLINE_BYTES,
    BlobStoreUnavailableError,
    CorruptBlobError,
    verified_bytes,
    verified_read,
)
from service.artifacts.service import find_file, resolve_version

MLFLOW_ARTIFACTS_PREFIX = "/api/2.0/mlflow-artifacts"
UPLOADS = "/api/v1/models/{name}/blobs/sha256:{hex}"


class FileInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    path: str
    is_dir: bool
    file_size: int | None = None


class Listing(msgspec.Struct, frozen=True):
    files: list[FileInfo]


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
    # One query, then the executor's cached state (Registry.model): MLflow fetches a
    # model's files in a burst of small requests.
    try:
        _, _, state = await services_of(request).registry.model(model)
    except NotFoundError:
        raise no_model(model) from None
    # What MLflow deleted (an archived model, a deprecated version) it no longer sees.
    if state.archived:
        raise no_model(model)
    version = resolve_version(state, ref)
    if version.deprecated:
        raise no_version(model, version.number)
    return version


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
    ) -> Response[bytes] | Stream:
        """One file of a version, re-hashed on the way out (streamed unless small)."""
        where = parse_path(artifact_path)
        if not where.inner:
            raise ValidationError(
                PATH_FIELD, "file", "name a file of the version; list a directory with ?path="
            )
        version = await _version(request, where.model, where.version)
        entry = find_file(version, where.inner)
        blobs = services_of(request).blobs
        etag = f'"sha256:{entry.sha256}"'
        if entry.size <= INLINE_BYTES:
            # A small file (MLmodel and friends, fetched in bursts) is checked whole, then
            # answered in one message: a stream's machinery costs more than its bytes.
            try:
                body = await verified_bytes(blobs, entry.sha256, entry.size)
            except CorruptBlobError:
                pass  # answered as a stream below, which is cut where the check fails
            else:
                return Response(body, media_type="application/octet-stream", headers={"ETag": etag})
        return Stream(
            verified_read(blobs, entry.sha256, entry.size, 0, entry.size),
            media_type="application/octet-stream",
            headers={"Content-Length": str(entry.size), "ETag": etag},
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


def mlflow_artifacts_router() -> Router:
    """Behind the same metrics, correlation and authentication as MLflow's registry routes
    (Bearer or Basic), answering errors in MLflow's envelope; no Idempotency-Key layer:
    nothing here writes."""
    handlers: ExceptionHandlersMap = {
        **MLFLOW_EXCEPTION_HANDLERS,
        BlobStoreUnavailableError: _blob_store_unavailable,
    }
    return Router(
        MLFLOW_ARTIFACTS_PREFIX,
        route_handlers=[MlflowArtifactsController, MlflowMultipartController],
        middleware=[edge(secret_of)],
        exception_handlers=handlers,
        # MLflow's API is MLflow's to document; modelreg's OpenAPI describes /api/v1.
        include_in_schema=False,
    )
