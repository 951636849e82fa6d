"""``/api/v1/models/{name}/uploads``: resumable upload sessions, and presigned S3 URLs for
uploads that bypass the API (docs/artifacts.md, "Resumable uploads").

OCI distribution-spec style: POST opens a session for a declared digest and size, PATCH
with ``Content-Range: <start>-<end>`` appends at the committed offset, GET says the
offset, PUT commits (verified whole, then ``artifact.blob_stored``), DELETE aborts. Every
call needs WRITE on the model, and a session is found only through the model it was
opened for, so a token scoped to another model cannot see or touch it.

A PATCH body is read straight from the ASGI channel (``raw_body``), like a single PUT.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, head, patch, post, put
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody

from events.access import Permission
from events.artifacts import DIGEST_PREFIX, parse_digest
from events.errors import ConflictError, ValidationError
from service.api.auth import require
from service.api.common import POSITION_HEADER, principal_of, services_of
from service.api.problems import PROBLEM_JSON, Problem, problem_at
from service.api.routes_artifacts import (
    RAW_BODY,
    BlobReceipt,
    ClientGoneError,
    _body,
    _client_gone,
    _etag,
    _unavailable,
)
from service.artifacts.blobstore import BlobStoreUnavailableError, BlobTooLargeError, Put
from service.artifacts.configure import upload_backend
from service.artifacts.service import Stored, collection_guards, model_state, record_stored
from service.artifacts.uploads import (
    IncompleteUploadError,
    OffsetMismatchError,
    Session,
    UploadBackend,
    UploadBusyError,
    abort,
    append_chunk,
    commit,
    find_session,
    new_session,
    open_session,
    session_lock,
)

UPLOAD_OFFSET = "Upload-Offset"
# OCI's form "<start>-<end>"; HTTP's "bytes <start>-<end>/<total>" is read the same way.
_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?(\d{1,19})-(\d{1,19})(?:/(?:\d{1,19}|\*))?")


class OpenUpload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    digest: str
    size: Annotated[int, msgspec.Meta(ge=0)]
    # True: answer a presigned URL to PUT the bytes to S3 directly (S3 store only).
    presigned: bool = False


class UploadView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    model: str
    digest: str
    size: int
    offset: int
    expires_at: datetime
    location: str
    part_size: int
    # A request is writing to the session now (on this server): its offset will still move.
    busy: bool = False
    upload_url: str | None = None
    upload_url_expires_at: datetime | None = None


def _location(name: str, session_id: str) -> str:
    return f"/api/v1/models/{name}/uploads/{session_id}"


def _progress_headers(name: str, session: Session, offset: int) -> dict[str, str]:
    headers = {"Location": _location(name, session.id), UPLOAD_OFFSET: str(offset)}
    if offset:
        headers["Range"] = f"0-{offset - 1}"  # OCI: the bytes the server holds
    return headers


def _view(
    name: str,
    session: Session,
    offset: int,
    backend: UploadBackend,
    url: str | None = None,
    url_expires: datetime | None = None,
) -> UploadView:
    return UploadView(
        id=session.id,
        model=name,
        digest=f"{DIGEST_PREFIX}{session.sha256}",
        size=session.size,
        offset=offset,
        expires_at=session.expires_at,
        location=_location(name, session.id),
        part_size=backend.part_size,
        busy=session_lock(session.id).locked(),
        upload_url=url,
        upload_url_expires_at=url_expires,
    )


def _offset_mismatch(
    request: Request[Any, Any, Any], exc: OffsetMismatchError
) -> Response[Problem]:
    headers = {UPLOAD_OFFSET: str(exc.offset)}
    if exc.offset:
        headers["Range"] = f"0-{exc.offset - 1}"
    return problem_at(
        request,
        "upload_offset",
        "Chunk not at the committed offset",
        416,
        str(exc),
        field="Content-Range",
        rule="offset",
        details={"offset": exc.offset},
        headers=headers,
    )


def _busy(request: Request[Any, Any, Any], exc: UploadBusyError) -> Response[Problem]:
    # Usually the server has not yet seen a dropped connection's request end: soon over.
    return problem_at(
        request,
        exc.code,
        "Upload session busy",
        409,
        exc.message,
        field="upload_id",
        rule="one_writer",
        headers={"Retry-After": "1"},
    )


def _incomplete(request: Request[Any, Any, Any], exc: IncompleteUploadError) -> Response[Problem]:
    return problem_at(
        request,
        exc.code,
        "Upload incomplete",
        409,
        exc.message,
        field="size",
        rule="complete",
        details=exc.details,
    )


def _too_large(request: Request[Any, Any, Any], exc: BlobTooLargeError) -> Response[Problem]:
    return problem_at(
        request,
        "blob_too_large",
        "Blob too large",
        422,
        str(exc),
        field="size",
        rule="max_bytes",
        details={"max_bytes": exc.limit},
    )


def _start_of(header: str | None) -> int:
    found = _CONTENT_RANGE.fullmatch(header or "")
    if found is None or int(found.group(2)) < int(found.group(1)):
        raise ValidationError(
            "Content-Range",
            "required" if header is None else "pattern",
            "a chunk says where it goes: Content-Range: <start>-<end> (inclusive), starting"
            " at the session's offset",
        )
    return int(found.group(1))


async def _session_of(
    request: Request[Any, Any, Any], name: str, upload_id: str
) -> tuple[str, Session, UploadBackend]:
    principal = principal_of(request)
    require(principal, Permission.WRITE, name)
    services = services_of(request)
    model_id, _ = await model_state(services.registry, name)
    backend = upload_backend(services.blobs, services.settings)
    session = await find_session(backend, upload_id, model_id, services.registry.now())
    return model_id, session, backend


class UploadsController(Controller):
    path = "/models/{name:str}/uploads"
    tags = ["artifacts"]
    exception_handlers = {
        ClientGoneError: _client_gone,
        BlobStoreUnavailableError: _unavailable,
        OffsetMismatchError: _offset_mismatch,
        BlobTooLargeError: _too_large,
        UploadBusyError: _busy,
        IncompleteUploadError: _incomplete,
    }

    @post("/", status_code=201)
    async def open(
        self, request: Request[Any, Any, Any], name: FromPath[str], data: JSONBody[OpenUpload]
    ) -> Response[UploadView]:
        """Open a session for a blob of the declared digest and size; its answer says where
        to send the chunks (``location``), or, with ``presigned``, the URL to PUT it to."""
        principal = principal_of(request)
        require(principal, Permission.WRITE, name)
        sha256 = parse_digest(data.digest)
        services = services_of(request)
        limit = services.settings.artifacts_max_bytes
        if data.size > limit:
            raise BlobTooLargeError(limit)
        model_id, state = await model_state(services.registry, name)
        if state.archived:
            raise ConflictError(f"model {name!r} is archived", name=name)
        backend = upload_backend(services.blobs, services.settings)
        now = services.registry.now()
        session = new_session(
            model_id=model_id,
            sha256=sha256,
            size=data.size,
            actor=principal.name,
            now=now,
            ttl=services.settings.uploads_ttl,
            direct=data.presigned,
        )
        url = url_expires = None
        if data.presigned:
            url_expires = min(
                now + timedelta(seconds=services.settings.uploads_link_ttl), session.expires_at
            )
            url = await backend.upload_url(session, url_expires - now)
        await open_session(backend, session, now)
        return Response(
            _view(name, session, 0, backend, url, url_expires),
            status_code=201,
            headers=_progress_headers(name, session, 0),
        )

    @get("/{upload_id:str}")
    async def status(
        self, request: Request[Any, Any, Any], name: FromPath[str], upload_id: FromPath[str]
    ) -> Response[UploadView]:
        """Where the upload stands: ``offset`` bytes are committed; resume from there."""
        _, session, backend = await _session_of(request, name, upload_id)
        offset = await backend.offset(session)
        return Response(
            _view(name, session, offset, backend), headers=_progress_headers(name, session, offset)
        )

    @head("/{upload_id:str}", status_code=200)
    async def offset(
        self, request: Request[Any, Any, Any], name: FromPath[str], upload_id: FromPath[str]
    ) -> Response[None]:
        """The committed offset in headers only (``Upload-Offset``, ``Range``), as tus asks."""
        _, session, backend = await _session_of(request, name, upload_id)
        offset = await backend.offset(session)
        headers = _progress_headers(name, session, offset) | {"Content-Length": "0"}
        return Response(None, status_code=200, headers=headers)

    @patch(
        "/{upload_id:str}",
        request_max_body_size=None,
        opt={RAW_BODY: True},
        status_code=202,
        responses={
            416: ResponseSpec(
                data_container=Problem,
                media_type=PROBLEM_JSON,
                description="The chunk does not start at the committed offset (Upload-Offset)",
                generate_examples=False,
            )
        },
    )
    async def append(
        self, request: Request[Any, Any, Any], name: FromPath[str], upload_id: FromPath[str]
    ) -> Response[UploadView]:
        """Append the body at ``Content-Range``'s start, which must be the committed offset
        (416 with the offset otherwise). Bytes received before a dropped connection stay."""
        _, session, backend = await _session_of(request, name, upload_id)
        start = _start_of(request.headers.get("content-range"))
        offset = await append_chunk(backend, session, start, _body(request))
        return Response(
            _view(name, session, offset, backend),
            status_code=202,
            headers=_progress_headers(name, session, offset),
        )

    @put("/{upload_id:str}", status_code=201)
    async def commit(
        self, request: Request[Any, Any, Any], name: FromPath[str], upload_id: FromPath[str]
    ) -> Response[BlobReceipt]:
        """Verify every byte against the declared digest and store the blob (201, or 200
        when the model had it); 422 ``digest_mismatch`` drops the session, 409 while bytes
        are missing (``details.offset``)."""
        if request.headers.get("content-length", "0") not in ("", "0"):
            raise ValidationError(
                "body", "empty", "a commit carries no bytes: send the last chunk with PATCH"
            )
        model_id, session, backend = await _session_of(request, name, upload_id)
        _, state = await model_state(services_of(request).registry, name)
        if state.archived:  # archived since the session opened: it takes no new blob
            raise ConflictError(f"model {name!r} is archived", name=name)
        actor = principal_of(request).name
        services = services_of(request)
        registry = services.registry
        # Taken before the commit writes the blob: a collection meanwhile is then noticed.
        guards = await collection_guards(registry)

        async def record(put: Put) -> Stored:
            return await record_stored(
                registry,
                services.blobs,
                put,
                guards=guards,
                model_id=model_id,
                actor=actor,
                sha256=session.sha256,
            )

        stored = await commit(backend, session, record)
        written = stored.written
        headers = {
            "ETag": _etag(session.sha256),
            "Location": f"/api/v1/models/{name}/blobs/{DIGEST_PREFIX}{session.sha256}",
        }
        if written.position is not None:
            headers[POSITION_HEADER] = str(written.position)
        receipt = BlobReceipt(
            digest=f"{DIGEST_PREFIX}{session.sha256}",
            size=stored.put.size,
            model=name,
            events=[e.event_type for e in written.events],
            position=written.position,
        )
        return Response(receipt, status_code=201 if stored.new_for_model else 200, headers=headers)

    @delete("/{upload_id:str}", status_code=204)
    async def abort(
        self, request: Request[Any, Any, Any], name: FromPath[str], upload_id: FromPath[str]
    ) -> None:
        """Abandon the session: its bytes are removed, nothing is recorded."""
        _, session, backend = await _session_of(request, name, upload_id)
        await abort(backend, session)
