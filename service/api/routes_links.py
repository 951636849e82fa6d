"""``/api/v1/models/{name}/versions/{ref}/links/{path}``: a short-lived presigned S3 URL
for a stored file of a version, so a big download need not pass through the API
(docs/artifacts.md, "Presigned URLs"). READ on the model, like the file itself.

The URL names the blob's content address, which only a verified upload ever writes; S3
serves the bytes without re-hashing them, so the answer carries the digest and size for
the client to check (the Python client does).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec
import obstore
from litestar import Controller, Request, get
from litestar.params import FromPath

from events.access import Permission
from events.artifacts import DIGEST_PREFIX
from events.errors import ConflictError
from service.api.auth import require
from service.api.common import principal_of, services_of
from service.api.routes_artifacts import _unavailable
from service.artifacts.blobstore import BlobStoreUnavailableError, blob_key
from service.artifacts.s3 import S3BlobStore
from service.artifacts.service import find_file, model_state, resolve_version


class DownloadLink(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    expires_at: datetime
    path: str
    digest: str
    size: int


class LinksController(Controller):
    path = "/models/{name:str}/versions/{ref:str}/links"
    tags = ["artifacts"]
    exception_handlers = {BlobStoreUnavailableError: _unavailable}

    @get("/{file_path:path}")
    async def link(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        ref: FromPath[str],
        file_path: FromPath[str],
    ) -> DownloadLink:
        """A presigned GET URL of a version's stored file (S3 store only: 409 otherwise),
        valid ``MODELREG_UPLOADS_LINK_TTL`` seconds; check the digest after downloading."""
        require(principal_of(request), Permission.READ, name)
        services = services_of(request)
        _, state = await model_state(services.registry, name)
        entry = find_file(resolve_version(state, ref), file_path.lstrip("/"))
        if not isinstance(services.blobs, S3BlobStore):
            raise ConflictError(
                "presigned URLs are offered only when the blob store is S3; download the file"
                " through .../files/{path}",
                path=entry.path,
            )
        ttl = timedelta(seconds=services.settings.uploads_link_ttl)
        now = services.registry.now()
        try:
            url = await obstore.sign_async(
                services.blobs.object_store, "GET", blob_key(entry.sha256), ttl
            )
        except obstore.exceptions.BaseError as exc:
            raise BlobStoreUnavailableError(str(exc)) from exc
        return DownloadLink(
            url=url,
            expires_at=now + ttl,
            path=entry.path,
            digest=f"{DIGEST_PREFIX}{entry.sha256}",
            size=entry.size,
        )
