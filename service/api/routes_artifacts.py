"""``/api/v1/models/{name}/blobs`` (upload) and ``.../versions/{ref}/files/{path}``
(download): a model's files, streamed both ways, verified both ways (docs/artifacts.md).

The upload body is read straight from the ASGI ``receive`` channel, never through
``request.body()``: the app's 8 MiB body cap and the body-reading hooks do not apply here
(the route opts out with ``opt={"raw_body": True}``), and memory stays flat. Its own size
limit is ``MODELREG_ARTIFACTS_MAX_BYTES``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, head, put
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.response import Stream

from events.access import Permission
from events.artifacts import DIGEST_PREFIX, parse_digest
from events.errors import ConflictError
from service.api.auth import require
from service.api.common import POSITION_HEADER, principal_of, services_of
from service.api.problems import Problem, problem_at
from service.artifacts.blobstore import (
    BlobStoreUnavailableError,
    BlobTooLargeError,
    verified_read,
)
from service.artifacts.ranges import UnsatisfiableRangeError, byte_range
from service.artifacts.service import (
    find_file,
    model_state,
    resolve_version,
    store_blob,
    stored_blobs,
)

RAW_BODY = "raw_body"


class ClientGoneError(Exception):
    """The client closed the connection before the whole body arrived."""


class BlobReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """An upload's answer: the blob, and the event recording it (none if it was already)."""

    digest: str
    size: int
    model: str
    events: list[str]
    position: int | None = None


async def _body(request: Request[Any, Any, Any]) -> AsyncIterator[bytes]:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError("the client went away mid-upload")
        body = message.get("body", b"")
        if isinstance(body, bytes) and body:
            yield body
        if not message.get("more_body", False):
            return


def _etag(sha256: str) -> str:
    return f'"{DIGEST_PREFIX}{sha256}"'


def _too_large(request: Request[Any, Any, Any], limit: int) -> Response[Problem]:
    return problem_at(
        request,
        "http_413",
        "Request too large",
        413,
        str(BlobTooLargeError(limit)),
        field="body",
        rule="max_bytes",
        details={"max_bytes": limit},
    )


def _client_gone(request: Request[Any, Any, Any], exc: ClientGoneError) -> Response[Problem]:
    # Nobody reads this answer; it keeps a dropped upload out of the 500s (nothing was kept).
    return problem_at(
        request,
        "client_gone",
        "Upload interrupted",
        400,
        str(exc),
        field="body",
        rule="complete",
    )


def _unavailable(
    request: Request[Any, Any, Any], exc: BlobStoreUnavailableError
) -> Response[Problem]:
    return problem_at(
        request,
        "blob_store_unavailable",
        "Blob store unavailable",
        503,
        "the blob store did not answer; retry later",
        headers={"Retry-After": "5"},
    )


class ArtifactsController(Controller):
    path = "/models/{name:str}"
    tags = ["artifacts"]
    exception_handlers = {
        ClientGoneError: _client_gone,
        BlobStoreUnavailableError: _unavailable,
    }

    @put(
        "/blobs/{digest:str}",
        request_max_body_size=None,
        opt={RAW_BODY: True},
        status_code=201,
    )
    async def upload(
        self, request: Request[Any, Any, Any], name: FromPath[str], digest: FromPath[str]
    ) -> Response[BlobReceipt] | Response[Problem]:
        """Store a file of the model: the raw bytes as the body, the path names their
        sha256. 201 when new to the model, 200 when it already had them; 422 on a digest
        mismatch (nothing kept); 413 past the size limit."""
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        sha256 = parse_digest(digest)
        services = services_of(request)
        model_id, state = await model_state(services.registry, name)
        if state.archived:
            raise ConflictError(f"model {name!r} is archived", name=name)
        limit = services.settings.artifacts_max_bytes
        announced = request.headers.get("content-length", "")
        if announced.isdigit() and int(announced) > limit:
            return _too_large(request, limit)
        try:
            stored = await store_blob(
                services.registry,
                services.blobs,
                model_id=model_id,
                actor=principal.name,
                sha256=sha256,
                body=_body(request),
                max_bytes=limit,
            )
        except BlobTooLargeError:
            return _too_large(request, limit)
        written = stored.written
        headers = {
            "ETag": _etag(sha256),
            "Location": f"/api/v1/models/{name}/blobs/{DIGEST_PREFIX}{sha256}",
        }
        if written.position is not None:
            headers[POSITION_HEADER] = str(written.position)
        body = BlobReceipt(
            digest=f"{DIGEST_PREFIX}{sha256}",
            size=stored.put.size,
            model=name,
            events=[e.event_type for e in written.events],
            position=written.position,
        )
        return Response(body, status_code=201 if stored.new_for_model else 200, headers=headers)

    @head("/blobs/{digest:str}", status_code=200)
    async def stored(
        self, request: Request[Any, Any, Any], name: FromPath[str], digest: FromPath[str]
    ) -> Response[None]:
        """200 when the model has stored this blob (and the store still holds it), else
        404: a client asks before uploading, so bytes the model already has are not sent
        again. READ on the model suffices: it answers for that model's files only."""
        require(principal_of(request), Permission.READ, name)
        sha256 = parse_digest(digest)
        services = services_of(request)
        model_id, _ = await model_state(services.registry, name)
        size = (await stored_blobs(services.registry.executor, model_id)).get(sha256)
        # The stream says the model stored it; the store must still hold it too, else the
        # client uploads it again (which restores it).
        if size is None or await services.blobs.size_of(sha256) != size:
            return Response(None, status_code=404, headers={"Content-Length": "0"})
        return Response(
            None, status_code=200, headers={"ETag": _etag(sha256), "Content-Length": str(size)}
        )

    @get("/versions/{ref:str}/files/{file_path:path}")
    async def download(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        ref: FromPath[str],
        file_path: FromPath[str],
    ) -> Stream | Response[Problem]:
        """A file of a version, by number (``7``), alias (``@champion``) or stage
        (``stage:production``); re-hashed on the way out; single HTTP ranges (206/416)."""
        require(principal_of(request), Permission.READ, name)
        services = services_of(request)
        _, state = await model_state(services.registry, name)
        entry = find_file(resolve_version(state, ref), file_path.lstrip("/"))
        etag = _etag(entry.sha256)
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        try:
            wanted = byte_range(
                request.headers.get("range"),
                entry.size,
                if_range=request.headers.get("if-range"),
                etag=etag,
            )
        except UnsatisfiableRangeError as exc:
            raise HTTPException(
                status_code=416,
                detail=str(exc),
                headers={**headers, "Content-Range": f"bytes */{exc.size}"},
            ) from None
        start, end = wanted or (0, entry.size)
        headers["Content-Length"] = str(end - start)
        if wanted is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
        return Stream(
            verified_read(services.blobs, entry.sha256, entry.size, start, end),
            status_code=206 if wanted is not None else 200,
            media_type="application/octet-stream",
            headers=headers,
        )
