"""``/api/v1/models/{name}/versions/{ref}/links/{path}``: where to fetch a stored file of
a version from. With the S3 store, a short-lived presigned S3 URL, so a big download need
not pass through the API; with the file store, the API's own download URL (send the
token). READ on the model, like the file itself (docs/artifacts.md, "Presigned URLs").

A presigned URL names the blob's content address, which only a verified upload ever
writes; S3 serves the bytes without re-hashing them, so the answer carries the digest and
size for the client to check (the Python client does).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import msgspec
import obstore
from litestar import Controller, Request, get
from litestar.params import FromPath

from events.access import Permission
from events.artifacts import DIGEST_PREFIX
from service.api.auth import require
from service.api.common import principal_of, services_of
from service.api.routes_artifacts import _unavailable
from service.artifacts.blobstore import BlobStoreUnavailableError, blob_key
from service.artifacts.s3 import S3BlobStore
from service.artifacts.service import find_file, model_state, resolve_version


class DownloadLink(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    # True: a presigned S3 URL, no token needed, valid until expires_at. False: the API's
    # download URL, which needs the caller's token and re-hashes on the way out.
    presigned: bool
    expires_at: datetime | None
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
        """A presigned GET URL of a version's stored file, valid
        ``MODELREG_UPLOADS_LINK_TTL`` seconds (S3 store), or the API's download URL (file
        store); check the digest after downloading. 409 for an external file."""
        require(principal_of(request), Permission.READ, name)
        services = services_of(request)
        _, state = await model_state(services.registry, name)
        version = resolve_version(state, ref)
        entry = find_file(version, file_path.lstrip("/"))
        digest = f"{DIGEST_PREFIX}{entry.sha256}"
        if not isinstance(services.blobs, S3BlobStore):
            own = (
                f"/api/v1/models/{quote(name)}/versions/{version.number}/files/{quote(entry.path)}"
            )
            return DownloadLink(
                url=str(request.base_url).rstrip("/") + own,
                presigned=False,
                expires_at=None,
                path=entry.path,
                digest=digest,
                size=entry.size,
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
            presigned=True,
            expires_at=now + ttl,
            path=entry.path,
            digest=digest,
            size=entry.size,
        )
