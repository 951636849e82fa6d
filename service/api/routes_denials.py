"""``GET /api/v1/audit/denials``: the refused requests, newest first (service.denials).

Refusals cross every model's scope (and name principals), so reading them needs ADMIN. The
process answering flushes its own pending refusals first, so a refusal it just made is in
the answer; other processes write theirs within a second.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get
from litestar.params import QueryParameter

from events.access import Permission
from service.api.auth import require
from service.api.common import principal_of, representable_time, services_of
from service.api.openapi_exact import MODEL_NAME, PRINCIPAL
from service.api.problems import BadRequestError
from service.api.subject_names import actor_ids
from service.denials.table import CURSOR_PATTERN, Denial, decode_cursor, read

DenialCode = Literal["unauthenticated", "permission_denied", "policy_violation", "overflow"]


class DenialsPage(msgspec.Struct, frozen=True, kw_only=True):
    items: list[Denial]
    next_before: str | None  # pass as ``before`` for the next (older) page


class DenialsController(Controller):
    path = "/audit/denials"
    tags = ["audit"]

    @get("/")
    async def denials(
        self,
        request: Request[Any, Any, Any],
        principal: Annotated[
            str | None, QueryParameter(pattern=PRINCIPAL, description="Only this principal")
        ] = None,
        model: Annotated[
            str | None, QueryParameter(pattern=MODEL_NAME, description="Only this model")
        ] = None,
        code: Annotated[DenialCode | None, QueryParameter(description="Only this kind")] = None,
        since: Annotated[
            datetime | None, QueryParameter(description="Refused at or after this time")
        ] = None,
        until: Annotated[
            datetime | None, QueryParameter(description="Refused before this time")
        ] = None,
        before: Annotated[
            str | None, QueryParameter(pattern=CURSOR_PATTERN, description="next_before of a page")
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> DenialsPage:
        """Refused requests (not authenticated, not permitted, refused by the governance
        policy): who, what, why, how often. Identical refusals within a minute are one row
        with a count; rows are kept for MODELREG_DENIALS_RETENTION_DAYS (default 90)."""
        require(principal_of(request), Permission.ADMIN)
        for field, value, pattern in (
            ("principal", principal, PRINCIPAL),
            ("model", model, MODEL_NAME),
        ):
            if value is not None and re.fullmatch(pattern, value) is None:
                raise BadRequestError(field, "pattern", f"{field} {value!r} is not a valid name")
        services = services_of(request)
        try:
            after = decode_cursor(before) if before else None
        except (ValueError, OverflowError, OSError):
            raise BadRequestError("before", "cursor", "not a next_before this API gave") from None
        await services.denials.flush()
        items = await read(
            services.pool,
            limit=limit,
            principal=await actor_ids(services, principal),
            model=model,
            code=code,
            since=since and representable_time(since, "since"),
            until=until and representable_time(until, "until"),
            before=after,
        )
        return DenialsPage(
            items=items, next_before=items[-1].cursor if len(items) == limit else None
        )
