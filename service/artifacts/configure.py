"""Which blob store a process uses, from ``MODELREG_ARTIFACTS_URL``. I/O: none (building a
store opens nothing)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from service.artifacts.blobstore import BlobStore
from service.artifacts.local import LocalBlobStore
from service.artifacts.s3 import S3BlobStore
from service.artifacts.uploads import UploadBackend
from service.artifacts.uploads_local import LocalUploads
from service.artifacts.uploads_s3 import S3Uploads
from service.settings import Settings, SettingsError


def blob_store_from(settings: Settings) -> BlobStore:
    """Unset: files under the data dir. ``file:///srv/blobs``: files there.
    ``s3://bucket/prefix``: S3 or a compatible server (``AWS_ENDPOINT_URL``)."""
    url = settings.artifacts_url
    if url is None:
        return LocalBlobStore(settings.data_dir)
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.path:
        return LocalBlobStore(Path(unquote(parts.path)))
    if parts.scheme == "s3" and parts.netloc:
        return S3BlobStore(url)
    raise SettingsError(
        f"MODELREG_ARTIFACTS_URL: expected s3://bucket[/prefix] or file:///path (got {url!r})"
    )


def upload_backend(blobs: BlobStore, settings: Settings) -> UploadBackend:
    """Where ``blobs`` keeps its upload sessions: beside its blobs, in the same store."""
    if isinstance(blobs, S3BlobStore):
        return S3Uploads(blobs, settings.uploads_part_size)
    if isinstance(blobs, LocalBlobStore):
        return LocalUploads(blobs, settings.uploads_part_size)
    raise TypeError(f"no upload sessions for {type(blobs).__name__}")
