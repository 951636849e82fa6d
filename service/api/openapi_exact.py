"""Make the generated OpenAPI document say exactly what the API accepts. No I/O.

Litestar derives the document from the route signatures and msgspec structs, but leaves
out what the API enforces elsewhere: request structs refuse unknown fields
(``forbid_unknown_fields``), every value is refused with a NUL (``refuse_nul_characters``),
names, ids, aliases and digests follow the rules of ``events.names``, log positions are
never negative, and unknown query parameters are refused (``refuse_unknown_query``). This
module writes those rules into the document once, when the app is built, so that a
client (or schemathesis, ``tests/e2e/test_schemathesis_checks.py``) generating data from
the document gets valid requests accepted and invalid ones refused.

Patterns use the subset of regular expressions that JSON Schema (ECMA 262) and Python's
``re`` read alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import msgspec

from events.access_grants import LIFETIME_UPPER_BOUND
from events.access_grants import MAX_TEXT as ACCESS_TEXT_MAX
from events.names import (
    ALIAS_MAX,
    MAX_TAGS,
    METRIC_KEY_MAX,
    MODEL_ID_MAX,
    MODEL_NAME_MAX,
    PLACE_NAME_MAX,
    STAGE_NAME_MAX,
    TAG_KEY_MAX,
    TAG_VALUE_MAX,
)
from service.api.common import MAX_POSITION
from service.artifacts.archive import MEDIA_TYPES

Schema = dict[str, Any]

# A NUL is refused everywhere (Postgres text cannot hold it).
NO_NUL = "^[^\\u0000]*$"
MODEL_NAME = f"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MODEL_NAME_MAX - 1}}}$"
ID = f"^[A-Za-z0-9][A-Za-z0-9_-]{{0,{MODEL_ID_MAX - 1}}}$"
KEY = f"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{{0,{METRIC_KEY_MAX - 1}}}$"
ALIAS = f"^[a-z][a-z0-9_-]{{0,{ALIAS_MAX - 1}}}$"
# An alias to set: 'latest' and 'v<digits>' are reserved (they resolve by number).
NEW_ALIAS = f"^(?!(?:latest|v[0-9]+)$)[a-z][a-z0-9_-]{{0,{ALIAS_MAX - 1}}}$"
DIGEST = "^sha256:[0-9a-f]{64}$"
PLACE = f"^[A-Za-z0-9][A-Za-z0-9._:/-]{{0,{PLACE_NAME_MAX - 1}}}$"
TAG_KEY = f"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{{0,{TAG_KEY_MAX - 1}}}$"
PRINCIPAL = "^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$"
SCOPE = "^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,255}\\*?|\\*)$"
# Access control (events.access_grants): role names, identity-provider groups, and the
# free text of roles, grants and service accounts (at most 500 characters).
ROLE = "^[a-z][a-z0-9_-]{0,63}$"
# White space as Python's re and ECMA 262 read \\s together (they differ on U+001C-U+001F,
# U+0085 and U+FEFF), spelled out so both refuse the same characters.
SPACES = (
    "\\t\\n\\u000b\\f\\r \\u001c-\\u001f\\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
)
GROUP = f"^[^{SPACES}=;:,|\\u0000]{{1,256}}$"
ACCESS_TEXT = f"^[^\\u0000]{{0,{ACCESS_TEXT_MAX}}}$"
# Required free text: something besides white space (``events.names.validate_text``).
NOT_BLANK = "^\\s*[^\\s\\u0000][^\\u0000]*$"
POSITION_DIGITS = f"^[0-9]{{1,{len(str(MAX_POSITION)) - 1}}}$"
# A version list: comma-separated version numbers of at most 9 digits (int32 range).
VERSION_LIST = "^-?[0-9]{1,9}(,-?[0-9]{1,9})*$"
# A stage name (``events.names.validate_stage_name``): a policy may define its own.
STAGE = f"^[a-z][a-z0-9_-]{{0,{STAGE_NAME_MAX - 1}}}$"
# A version reference of the file routes: a number, @alias or stage:<stage>
# (``service.artifacts.service.resolve_version``).
VERSION_REF = (
    f"^(?:[0-9]{{1,10}}|@[a-z][a-z0-9_-]{{0,{ALIAS_MAX - 1}}}"
    f"|stage:[a-z][a-z0-9_-]{{0,{STAGE_NAME_MAX - 1}}})$"
)

POSITIONS = frozenset({"min_position", "cursor", "before_position", "after"})
_SORT_KEY = "[A-Za-z0-9_][A-Za-z0-9_.:/-]*"
# Search filters as projections.search reads them: sort orders (white space around is
# ignored) and tag filters (``key`` or ``key=value``), by (path, query parameter).
_TAG_FILTER = f"^{_SORT_KEY}(?:=[^\\u0000]*)?$"
# A finite threshold: at most 200 integer digits and a two-digit exponent stay below 1e300.
_NUMBER = "[+-]?(?:[0-9]{1,200}(?:\\.[0-9]{0,200})?|\\.[0-9]{1,200})(?:[eE][+-]?[0-9]{1,2})?"
_METRIC_FILTER = (
    f"^\\s*{_SORT_KEY}(?:\\[(?:\\*|{_SORT_KEY})\\])?\\s*(?:>=|<=|>|<|=)\\s*{_NUMBER}\\s*$"
)
_QUERY_PATTERNS = {
    ("/api/v1/models", "order_by"): "^\\s*-?(?:name|created|updated)\\s*$",
    ("/api/v1/models/{name}/versions", "order_by"): (
        f"^\\s*-?(?:name|created|updated|version|metric:{_SORT_KEY}(?:\\[{_SORT_KEY}\\])?)\\s*$"
    ),
    ("/api/v1/models", "tag"): _TAG_FILTER,
    ("/api/v1/models/{name}/versions", "tag"): _TAG_FILTER,
    ("/api/v1/models", "metric"): _METRIC_FILTER,
    ("/api/v1/models/{name}/versions", "metric"): _METRIC_FILTER,
    ("/api/v1/models", "stage"): STAGE,
    ("/api/v1/models/{name}/versions", "stage"): STAGE,
    ("/api/v1/models/{name}/timeline", "stage"): STAGE,
    ("/api/v1/models/{name}/versions/{version}/gate", "to"): STAGE,
    ("/api/v1/access/check", "group"): GROUP,
    ("/api/v1/access/roles/{role}", "reason"): ACCESS_TEXT,
    ("/api/v1/access/grants/{grant_id}", "reason"): ACCESS_TEXT,
    ("/api/v1/service-accounts/{name}/disable", "reason"): ACCESS_TEXT,
}
# Path parameters by name: the rule each route applies to it.
_PATH_PATTERNS = {
    "name": MODEL_NAME,
    "request_id": ID,
    "token_id": ID,
    "alias": ALIAS,
    "key": KEY,
    "digest": DIGEST,
    "ref": VERSION_REF,
    "role": ROLE,
    "grant_id": ID,
    "subject": PRINCIPAL,  # a principal's name, or a subject id (subj_...), which matches too
}
# Request body fields by (component, property): the rule the command applies to it.
_BODY_PATTERNS = {
    ("CreateModel", "name"): MODEL_NAME,
    ("Rename", "new_name"): MODEL_NAME,
    ("Reason", "reason"): NOT_BLANK,
    ("RollbackRequest", "reason"): NOT_BLANK,
    ("Metric", "key"): KEY,
    ("DeploymentStart", "deployment_id"): ID,
    ("DeploymentStart", "environment"): PLACE,
    ("DeploymentStart", "target"): PLACE,
    ("DeploymentStart", "desired_alias"): NEW_ALIAS,
    ("DeploymentReport", "deployment_id"): ID,
    ("TokenRequest", "principal"): PRINCIPAL,
    ("EraseRequest", "reason"): NOT_BLANK,
    ("OpenUpload", "digest"): DIGEST,
    ("PromotionRequest", "justification"): NOT_BLANK,
    ("PromotionRequest", "alias"): NEW_ALIAS,
    ("StageChange", "to"): STAGE,
    ("PromotionRequest", "target_stage"): STAGE,
    ("DeploymentStart", "desired_stage"): STAGE,
    ("StageChange", "environment"): PLACE,
    ("PromotionRequest", "environment"): PLACE,
    ("TokenRequest", "service_account"): PRINCIPAL,
    ("RoleRequest", "description"): ACCESS_TEXT,
    ("GrantRequest", "role"): ROLE,
    ("GrantRequest", "model"): SCOPE,
    ("GrantRequest", "principal"): PRINCIPAL,
    ("GrantRequest", "group"): GROUP,
    ("GrantRequest", "reason"): ACCESS_TEXT,
    ("ServiceAccountRequest", "name"): PRINCIPAL,
    ("ServiceAccountRequest", "description"): ACCESS_TEXT,
}
_BODY_ITEM_PATTERNS = {
    ("TokenRequest", "scopes"): SCOPE,
    ("ServiceAccountRequest", "scopes"): SCOPE,
}
# Lists a command refuses empty.
_NOT_EMPTY = {
    ("MetricBatch", "metrics"),
    ("TokenRequest", "roles"),
    ("RegisterVersion", "artifacts"),
    ("RoleRequest", "permissions"),
    ("ServiceAccountRequest", "roles"),
}


def _present(field: str) -> Schema:
    """``field`` is given and not null."""
    return {"required": [field], "properties": {field: {"not": {"type": "null"}}}}


# Rules across a request's fields (the deciders' cross-field checks), added to the
# component's schema as they are.
_OBJECT_RULES: dict[str, Schema] = {
    # A promotion names a target stage, an alias, or both (events.model.promotions).
    "PromotionRequest": {"anyOf": [_present("target_stage"), _present("alias")]},
    # A deployment follows a stage or an alias, not both, and never the archived stage.
    "DeploymentStart": {
        "not": {"allOf": [_present("desired_stage"), _present("desired_alias")]},
        "properties": {"desired_stage": {"not": {"const": "archived"}}},
    },
    # A token names its principal and roles, or the service account it is for.
    "TokenRequest": {"anyOf": [_present("service_account"), {"required": ["principal", "roles"]}]},
    # A grant is given to exactly one of a principal and a group.
    "GrantRequest": {"oneOf": [_present("principal"), _present("group")]},
    # A service account's tokens live between a minute and the upper bound.
    "ServiceAccountRequest": {
        "properties": {
            "max_lifetime_seconds": {
                "minimum": 60,
                "maximum": int(LIFETIME_UPPER_BOUND.total_seconds()),
            }
        }
    },
    # A failed or rolled back deployment says why.
    "DeploymentReport": {
        "if": {
            "required": ["status"],
            "properties": {"status": {"enum": ["failed", "rolled_back"]}},
        },
        "then": {"required": ["reason"], "properties": {"reason": {"pattern": NOT_BLANK}}},
    },
}
# A tags object: keys as events.names.validate_tags checks them, values at most 5,000
# characters, at most 100 entries.
_TAGS: Schema = {
    "propertyNames": {"pattern": TAG_KEY},
    "maxProperties": MAX_TAGS,
    "additionalProperties": {"type": "string", "maxLength": TAG_VALUE_MAX},
}
# Log position or RFC 3339 time (``service.api.common.parse_as_of``).
_MOMENT: Schema = {
    "anyOf": [
        {"type": "string", "pattern": POSITION_DIGITS},
        {
            "type": "string",
            "format": "date-time",
            # A time whose UTC is past year 9999 or before year 1 is refused (400 range).
            "not": {"pattern": "^(?:9999-12-31T.*-|0001-01-01T.*[+])[0-9]{2}:[0-9]{2}$"},
        },
    ]
}


# Answers that are bytes, not JSON: (path, method) -> the media types of their 200.
_BINARY_ANSWERS = {
    ("/api/v1/models/{name}/versions/{ref}/archive", "get"): MEDIA_TYPES.values(),
}


def make_exact(document: Schema, strict_structs: dict[str, type[msgspec.Struct]]) -> Schema:
    """Write the API's rules into ``document`` (a rendered OpenAPI dict), in place; return it.

    ``strict_structs`` maps component names to the request structs that refuse unknown
    fields: their schemas get ``additionalProperties: false``."""
    components: dict[str, Schema] = document.get("components", {}).get("schemas", {})
    for name, schema in components.items():
        _exact_component(name, schema, strict=name in strict_structs)
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if isinstance(operation, dict):
                _exact_operation(path, method, operation)
    # Only what clients send: answers may quote a refused value (a problem's detail).
    for schema in _all_schemas(_sent(document)):
        _no_nul(schema)
    return document


def _exact_component(name: str, schema: Schema, *, strict: bool) -> None:
    if strict and schema.get("type") == "object":
        schema["additionalProperties"] = False
    rules = _OBJECT_RULES.get(name)
    if rules is not None:
        _merge(schema, rules)
    for field, value in schema.get("properties", {}).items():
        if field == "tags" and value.get("type") == "object":
            value.update(_TAGS)
        pattern = _BODY_PATTERNS.get((name, field))
        if pattern is not None:
            _set_pattern(value, pattern)
        if (name, field) in _NOT_EMPTY:
            value["minItems"] = 1
        pattern = _BODY_ITEM_PATTERNS.get((name, field))
        if pattern is not None:
            _set_pattern(value.get("items", {}), pattern)


def _exact_operation(path: str, method: str, operation: Schema) -> None:
    for parameter in operation.get("parameters", []):
        _exact_parameter(parameter)
        pattern = _QUERY_PATTERNS.get((path, parameter.get("name", "")))
        if pattern is not None and parameter.get("in") == "query":
            schema = parameter["schema"]
            _set_pattern(schema, pattern)
            for branch in [schema, *schema.get("oneOf", []), *schema.get("anyOf", [])]:
                if branch.get("type") == "array":
                    _set_pattern(branch.get("items", {}), pattern)
    binary = _BINARY_ANSWERS.get((path, method))
    if binary is not None and "200" in operation.get("responses", {}):
        bytes_schema = {"type": "string", "format": "binary"}
        operation["responses"]["200"]["content"] = {
            media_type: {"schema": bytes_schema} for media_type in binary
        }


def _sent(document: Schema) -> list[Any]:
    """The parts of ``document`` that describe requests: parameters, request bodies, and
    the component schemas these refer to (transitively)."""
    components: dict[str, Schema] = document.get("components", {}).get("schemas", {})
    roots: list[Any] = []
    for item in document.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict):
                roots += [operation.get("parameters", []), operation.get("requestBody", {})]
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in seen and name in components:
                    seen.add(name)
                    pending.append(components[name])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return [*roots, *(components[name] for name in sorted(seen))]


def strict_structs(*modules: Any) -> dict[str, type[msgspec.Struct]]:
    """The msgspec structs defined in ``modules`` that refuse unknown fields, by name."""
    found: dict[str, type[msgspec.Struct]] = {}
    for module in modules:
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, msgspec.Struct)
                and value.__struct_config__.forbid_unknown_fields
            ):
                found[value.__name__] = value
                # Litestar names a component by module and class when two classes share a
                # name (``service_api_schemas_Run`` beside a view's ``Run``).
                found[f"{value.__module__.replace('.', '_')}_{value.__name__}"] = value
    return found


def _merge(schema: Schema, rules: Schema) -> None:
    """``rules`` into a component schema: per-property additions merged into the property
    (beside its own type), anything else set on the object."""
    for key, value in rules.items():
        if key == "properties":
            for field, extra in value.items():
                target = schema.setdefault("properties", {}).setdefault(field, {})
                target.setdefault("allOf", []).append(extra)
        else:
            schema[key] = value


def _set_pattern(schema: Schema, pattern: str) -> None:
    """``pattern`` on the string (or the string branch of an optional string)."""
    for branch in [schema, *schema.get("oneOf", []), *schema.get("anyOf", [])]:
        if branch.get("type") == "string":
            branch["pattern"] = pattern


def _exact_parameter(parameter: Schema) -> None:
    name, where = parameter.get("name"), parameter.get("in")
    if where == "path" and name in _PATH_PATTERNS:
        parameter["schema"] = {"type": "string", "pattern": _PATH_PATTERNS[name]}
    elif (where == "path" and name == "position") or (
        where == "query" and name in POSITIONS
    ):  # a log position (webhook deliveries)
        parameter["schema"] = {"type": "integer", "minimum": 0, "maximum": MAX_POSITION}
    elif where == "query" and name in ("as_of", "at"):
        description = parameter["schema"].get("description")
        parameter["schema"] = dict(_MOMENT)
        if description:
            parameter["description"] = description
    elif where == "query" and name == "versions":
        parameter["schema"] = {**parameter["schema"], "pattern": VERSION_LIST}


def _all_schemas(node: Any) -> Iterator[Schema]:
    if isinstance(node, dict):
        if "type" in node or "anyOf" in node or "oneOf" in node:
            yield node
        for value in node.values():
            yield from _all_schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _all_schemas(value)


def _no_nul(schema: Schema) -> None:
    """Free text gets the no-NUL pattern; an object with free keys, for its keys too."""
    if schema.get("type") == "string" and not (
        {"pattern", "enum", "format", "const"} & schema.keys()
    ):
        schema["pattern"] = NO_NUL
    extra = schema.get("additionalProperties")
    if schema.get("type") == "object" and isinstance(extra, dict):
        schema.setdefault("propertyNames", {"pattern": NO_NUL})


def declared_query_names(document: Schema) -> dict[tuple[str, str], frozenset[str]]:
    """For each (METHOD, path) of the document, the query parameters it declares."""
    declared: dict[tuple[str, str], frozenset[str]] = {}
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if isinstance(operation, dict):
                declared[(method.upper(), path)] = frozenset(
                    p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"
                )
    return declared


_TYPED = re.compile(r"\{(\w+):[^}]*\}")


def document_path(template: str) -> str:
    """A Litestar path template (``/models/{name:str}``) as the document writes it."""
    return _TYPED.sub(r"{\1}", template)
