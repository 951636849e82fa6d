"""What the UI's forms and query strings carry, decoded and checked by Litestar (a bad
value answers 400 naming the field, like the JSON API)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from litestar import Request

from events.errors import ValidationError
from service.api.common import refuse_nul_characters
from service.api.rate_limit import limit_expensive_reads


class LoginForm(msgspec.Struct, frozen=True, kw_only=True):
    token: str = msgspec.field(default="")
    next: str = "/ui/"


class DecisionForm(msgspec.Struct, frozen=True, kw_only=True):
    decision: Literal["approve", "reject"]
    comment: str = ""


class SearchForm(msgspec.Struct, frozen=True, kw_only=True):
    """The models page's filters; empty fields filter nothing."""

    q: str = ""
    tag: str = ""
    stage: str = ""
    alias: str = ""
    owner: str = ""
    metric: str = ""
    as_of: str = ""
    cursor: str = ""


async def screen_form_request(request: Request[Any, Any, Any]) -> None:
    """The API's screening (``service.api.router.screen_request``) for form posts: no NUL
    in any path, query or form value, expensive reads within the caller's budget. The JSON
    body rules do not apply: a page's forms are URL-encoded."""
    await refuse_nul_characters(request)
    if request.method == "POST":
        form = await request.form()
        for name, value in form.multi_items():
            if isinstance(value, str) and "\x00" in value:
                raise ValidationError(
                    name, "nul_character", f"{name} contains the NUL character (U+0000)"
                )
    await limit_expensive_reads(request)
