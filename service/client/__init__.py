"""The modelreg Python client: sync ``Client`` and ``AsyncClient`` over the v1 HTTP API.

    from service.client import Client
    reg = Client()  # MODELREG_URL, MODELREG_TOKEN
    reg.register_version("churn", artifacts_dir="out/", params={"lr": 0.1}, metrics={"auc": 0.93})

Needs only httpx and msgspec (rich for progress bars, when shown); never the server stack.
See docs/client.md.
"""

from __future__ import annotations

from service.client._async_client import AsyncClient
from service.client._sync_client import Client
from service.client._transport import DEFAULT_URL, NO_RETRIES, RetryPolicy
from service.client.errors import (
    ConfigurationError,
    Conflict,
    CorruptDownload,
    ModelregError,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    RateLimited,
    ServerError,
    Unauthenticated,
    Unreachable,
    UnsafePath,
    ValidationFailed,
)
from service.client.manifest import ManifestError, build_manifest
from service.client.models import (
    ArtifactEntry,
    CodeReference,
    DatasetReference,
    Dependencies,
    Downloaded,
    FileTransfer,
    Metric,
    ModelSignature,
    Receipt,
    RegisteredVersion,
    RunReference,
)

__all__ = [
    "DEFAULT_URL",
    "NO_RETRIES",
    "ArtifactEntry",
    "AsyncClient",
    "Client",
    "CodeReference",
    "ConfigurationError",
    "Conflict",
    "CorruptDownload",
    "DatasetReference",
    "Dependencies",
    "Downloaded",
    "FileTransfer",
    "ManifestError",
    "Metric",
    "ModelSignature",
    "ModelregError",
    "NotFound",
    "PermissionDenied",
    "PreconditionFailed",
    "RateLimited",
    "Receipt",
    "RegisteredVersion",
    "RetryPolicy",
    "RunReference",
    "ServerError",
    "Unauthenticated",
    "Unreachable",
    "UnsafePath",
    "ValidationFailed",
    "build_manifest",
]
