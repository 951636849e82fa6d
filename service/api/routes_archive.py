"""``GET /api/v1/models/{name}/versions/{ref}/archive``: a whole version's files in one
tar (default) or zip stream, each file re-hashed on the way out (docs/artifacts.md).

``{ref}`` is resolved like the single-file download's: ``7``, ``@champion`` or
``stage:production``. External entries are not in the archive (the registry holds no
copy); its first member, ``.modelreg/manifest.json``, lists them with their uri, and the
``Modelreg-External-Files`` header counts them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Request, get
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream

from events.access import Permission
from service.api.auth import require
from service.api.common import principal_of, services_of
from service.artifacts.archive import (
    MEDIA_TYPES,
    archive_stream,
    manifest_bytes,
    tar_length,
)
from service.artifacts.service import model_state, resolve_version

EXTERNAL_HEADER = "Modelreg-External-Files"
VERSION_HEADER = "Modelreg-Version"


class ArchiveController(Controller):
    path = "/models/{name:str}"
    tags = ["artifacts"]

    @get("/versions/{ref:str}/archive")
    async def archive(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        ref: FromPath[str],
        fmt: Annotated[
            Literal["tar", "zip"],
            QueryParameter(name="format", description="tar (the default) or zip"),
        ] = "tar",
    ) -> Stream:
        """Every stored file of a version by number (``7``), alias (``@champion``) or stage
        (``stage:production``) as one tar or zip, streamed; a corrupt blob cuts the stream
        short (an error, never bad bytes). External files are listed in
        ``.modelreg/manifest.json``, not included."""
        require(principal_of(request), Permission.READ, name)
        services = services_of(request)
        _, state = await model_state(services.registry, name)
        version = resolve_version(state, ref)
        entries = version.content.artifacts
        manifest = manifest_bytes(state.name, version.number, entries)
        external = sum(1 for e in entries if e.external)
        headers = {
            "Content-Disposition": f'attachment; filename="{state.name}-v{version.number}.{fmt}"',
            EXTERNAL_HEADER: str(external),
            VERSION_HEADER: str(version.number),
        }
        if fmt == "tar":
            # Known up front, so a cut stream is visibly short and clients show progress.
            headers["Content-Length"] = str(
                tar_length(manifest, [e for e in entries if not e.external])
            )
        return Stream(
            archive_stream(services.blobs, fmt, manifest, entries),
            media_type=MEDIA_TYPES[fmt],
            headers=headers,
        )
