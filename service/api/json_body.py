"""Screening of a JSON request body before a handler decodes it. I/O: none (the body is
already buffered, within the size cap).

msgspec, which decodes bodies into the request structs, accepts any media type, keeps the
last of duplicate keys (``{"roles": ["reader"], "roles": ["admin"]}`` would mint an
admin) and recurses without a bound of its own. So every body a handler takes as ``data``
is parsed once here first and refused when it is

    not declared JSON (``application/json`` or ``application/*+json``)   -> 415 Content-Type
    nested deeper than MAX_DEPTH                                       -> 400 body, depth
    an object with a key twice                                         -> 400 <field>, duplicate_key

Malformed JSON is left to the handler's decoding, which names what is wrong (400 body json).
"""

from __future__ import annotations

import json
from typing import Any

from litestar import Request

from service.api.problems import BadRequestError

# Request documents are a few levels deep (a policy, a manifest); 64 is far beyond any of
# them and far below the interpreter's recursion limit, so no later walk can hit it.
MAX_DEPTH = 64


class _DuplicateKeyError(ValueError):
    pass


class _Duplicated:
    """Stands for an object that had a key twice, on the second (slow) parse that finds where."""

    def __init__(self, key: str) -> None:
        self.key = key


async def refuse_unsafe_json(request: Request[Any, Any, Any]) -> None:
    """The before-request check; passes a handler without a JSON body, and an empty body
    (the handler says whether it needs one)."""
    handler = request.scope.get("route_handler")
    parameters = getattr(getattr(handler, "parsed_fn_signature", None), "parameters", {})
    if "data" not in parameters:
        return
    body = await request.body()
    if not body:
        return
    _require_json_media_type(request.headers.get("content-type", ""))
    try:
        document = json.loads(body, object_pairs_hook=_unique_keys)
    except _DuplicateKeyError:
        document = json.loads(body, object_pairs_hook=_mark_duplicates)
        _require_depth(document)
        raise _duplicate(document) from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        return  # malformed (or not UTF-8): the handler's decoding reports it
    _require_depth(document)


def is_json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _require_json_media_type(content_type: str) -> None:
    if not is_json_media_type(content_type):
        shown = content_type.split(";", 1)[0].strip() or "none"
        raise BadRequestError(
            "Content-Type",
            "media_type",
            f"this request takes a JSON body sent as application/json, not {shown}",
            status=415,
            code="unsupported_media_type",
        )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _DuplicateKeyError
    return found


def _mark_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _Duplicated:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return _Duplicated(key)
        seen.add(key)
    return dict(pairs)


def _require_depth(document: Any) -> None:
    """Iterative, so a deep document cannot exhaust the stack here either."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, dict | list):
            continue
        children = value.values() if isinstance(value, dict) else value
        if depth > MAX_DEPTH:
            raise _too_deep()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def _too_deep() -> BadRequestError:
    return BadRequestError(
        "body", "depth", f"the JSON body is nested deeper than {MAX_DEPTH} levels"
    )


def _duplicate(document: Any) -> BadRequestError:
    path, key = _first_duplicate(document, "")
    return BadRequestError(
        path,
        "duplicate_key",
        f"the key {key!r} appears twice in one object; send each key once",
    )


def _first_duplicate(value: Any, path: str) -> tuple[str, str]:
    """Where the marked object is (``artifacts[0].path``); depth is bounded by now."""
    if isinstance(value, _Duplicated):
        return (f"{path}.{value.key}" if path else value.key), value.key
    if isinstance(value, dict):
        entries = [(f"{path}.{key}" if path else key, item) for key, item in value.items()]
    elif isinstance(value, list):
        entries = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
    else:
        entries = []
    for where, item in entries:
        if isinstance(item, _Duplicated | dict | list):
            found = _first_duplicate(item, where)
            if found[0]:
                return found
    return "", ""
