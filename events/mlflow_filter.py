"""MLflow's registry search grammar: filter strings and ``order_by`` entries. Pure.

What MLflow clients send to ``registered-models/search`` and ``model-versions/search``,
parsed into clauses the projections turn into SQL. MLflow parses these with sqlparse; this
is a small hand-written tokenizer for the same subset, so a malformed string is refused
with a message naming what was expected, never half-understood.

    filter    := clause ( AND clause )*                  (no OR, as in MLflow)
    clause    := identifier comparator value
    identifier:= attribute | [attribute.]attribute | (tags|tag).key
    key       := bare key | `backticked key` | "quoted key"
    value     := 'string' | "string" | integer | ( 'a', 'b', ... )

Attributes and their comparators:

    models    name (= != LIKE ILIKE IN, NOT IN); creation_timestamp,
              last_updated_timestamp (= != < <= > >=, integer ms)
    versions  name, run_id, source_path (= != LIKE ILIKE IN, NOT IN); version_number,
              creation_timestamp, last_updated_timestamp (= != < <= > >=, integer)
    tags      = != LIKE ILIKE (a missing tag matches nothing, as in MLflow)

``order_by`` entries are ``attribute [ASC|DESC]``: models name, creation_timestamp,
last_updated_timestamp; versions those and version_number.

Every refusal is a ``ValidationError`` on field ``filter`` or ``order_by`` (MLflow's
``INVALID_PARAMETER_VALUE``).
"""

from __future__ import annotations

import enum
import re
from typing import Literal

import msgspec

from events.errors import ValidationError

MAX_FILTER_LENGTH = 4096
MAX_CLAUSES = 50
MAX_IN_VALUES = 1000

# The tag MLflow sets on prompts (stored as registered models): they are hidden from model
# searches unless a filter names this tag.
PROMPT_TAG = "mlflow.prompt.is_prompt"


class Target(enum.StrEnum):
    MODELS = "models"
    VERSIONS = "versions"


Comparator = Literal["=", "!=", "<", "<=", ">", ">=", "LIKE", "ILIKE", "IN", "NOT IN"]
Value = str | int | tuple[str, ...]

_STRING_COMPARATORS: frozenset[str] = frozenset({"=", "!=", "LIKE", "ILIKE", "IN", "NOT IN"})
_TAG_COMPARATORS: frozenset[str] = frozenset({"=", "!=", "LIKE", "ILIKE"})
_NUMERIC_COMPARATORS: frozenset[str] = frozenset({"=", "!=", "<", "<=", ">", ">="})

_STRING_ATTRIBUTES = {
    Target.MODELS: frozenset({"name"}),
    Target.VERSIONS: frozenset({"name", "run_id", "source_path"}),
}
_NUMERIC_ATTRIBUTES = {
    Target.MODELS: frozenset({"creation_timestamp", "last_updated_timestamp"}),
    Target.VERSIONS: frozenset({"version_number", "creation_timestamp", "last_updated_timestamp"}),
}
ORDER_KEYS = {
    Target.MODELS: ("name", "creation_timestamp", "last_updated_timestamp"),
    Target.VERSIONS: ("name", "version_number", "creation_timestamp", "last_updated_timestamp"),
}


class Clause(msgspec.Struct, frozen=True, kw_only=True):
    """``kind`` attribute: ``key`` is an attribute name; tag: ``key`` is the tag key."""

    kind: Literal["attribute", "tag"]
    key: str
    comparator: Comparator
    value: Value


class OrderKey(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    ascending: bool


# --- tokens -----------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    \s*(?:
      (?P<string>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*")
    | (?P<backticked>`[^`]*`)
    | (?P<number>-?[0-9]+(?![A-Za-z0-9_.]))
    | (?P<op>!=|<>|<=|>=|=|<|>)
    | (?P<punct>[(),])
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<dot>\.)
    | (?P<other>\S)
    )""",
    re.VERBOSE,
)


class _Token(msgspec.Struct, frozen=True):
    kind: str
    text: str
    at: int


def _tokens(text: str) -> list[_Token]:
    found: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:  # only trailing whitespace is left
            break
        kind = match.lastgroup
        if kind == "other":
            raise _bad(f"unexpected character {match[kind]!r} at {match.start(kind)}")
        found.append(_Token(kind, match[kind], match.start(kind)))
        position = match.end()
    return found


def _bad(message: str, field: str = "filter") -> ValidationError:
    return ValidationError(field, "syntax", f"invalid {field}: {message}")


def _unquote(text: str) -> str:
    quote = text[0]
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body.replace(quote * 2, quote))


class _Reader:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.index = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, what: str) -> _Token:
        token = self.peek()
        if token is None:
            raise _bad(f"expected {what} at the end")
        self.index += 1
        return token

    def word(self, *words: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.upper() in words:
            self.index += 1
            return True
        return False


# --- filters ----------------------------------------------------------------------------


def parse_filter(text: str | None, target: Target) -> tuple[Clause, ...]:
    """The clauses of an MLflow filter string (empty or None: no filter)."""
    if text is None or not text.strip():
        return ()
    if len(text) > MAX_FILTER_LENGTH:
        raise ValidationError(
            "filter", "length", f"a filter is at most {MAX_FILTER_LENGTH} characters"
        )
    reader = _Reader(text)
    clauses = [_clause(reader, target)]
    while reader.peek() is not None:
        if not reader.word("AND"):
            token = reader.take("AND")
            raise _bad(f"expected AND at {token.at}, found {token.text!r} (OR is not supported)")
        clauses.append(_clause(reader, target))
        if len(clauses) > MAX_CLAUSES:
            raise ValidationError("filter", "too_many", f"at most {MAX_CLAUSES} clauses")
    return tuple(clauses)


def _identifier(reader: _Reader, target: Target) -> tuple[Literal["attribute", "tag"], str]:
    first = reader.take("an identifier")
    if first.kind != "word":
        raise _bad(f"expected an identifier at {first.at}, found {first.text!r}")
    entity = first.text.lower()
    following = reader.peek()
    if following is None or following.kind != "dot":
        return "attribute", _attribute(first.text, target)
    reader.take("'.'")
    if entity in ("tag", "tags"):
        return "tag", _tag_key(reader)
    if entity == "attribute":
        key = reader.take("an attribute")
        if key.kind != "word":
            raise _bad(f"expected an attribute at {key.at}, found {key.text!r}")
        return "attribute", _attribute(key.text, target)
    raise _bad(f"unknown entity {first.text!r}: use an attribute, tags.<key> or attribute.<name>")


def _attribute(name: str, target: Target) -> str:
    known = _STRING_ATTRIBUTES[target] | _NUMERIC_ATTRIBUTES[target]
    if name not in known:
        raise _bad(f"unknown attribute {name!r}; searchable: {', '.join(sorted(known))}")
    return name


def _tag_key(reader: _Reader) -> str:
    """A tag key: backticked, quoted, or bare (bare keys may hold dots: tags.a.b)."""
    token = reader.take("a tag key")
    if token.kind == "backticked":
        key = token.text[1:-1]
    elif token.kind == "string":
        key = _unquote(token.text)
    elif token.kind == "word":
        parts = [token.text]
        while (following := reader.peek()) is not None and following.kind == "dot":
            reader.take("'.'")
            part = reader.take("a tag key part")
            if part.kind not in ("word", "number"):
                raise _bad(f"expected a tag key part at {part.at}, found {part.text!r}")
            parts.append(part.text)
        key = ".".join(parts)
    else:
        raise _bad(f"expected a tag key at {token.at}, found {token.text!r}")
    if not key:
        raise _bad("a tag key must not be empty")
    return key


def _comparator(reader: _Reader) -> Comparator:
    if reader.word("NOT"):
        if not reader.word("IN"):
            raise _bad("expected IN after NOT")
        return "NOT IN"
    for word in ("LIKE", "ILIKE", "IN"):
        if reader.word(word):
            return word
    token = reader.take("a comparator")
    if token.kind != "op":
        raise _bad(f"expected a comparator at {token.at}, found {token.text!r}")
    return "!=" if token.text == "<>" else token.text  # type: ignore[return-value]


def _clause(reader: _Reader, target: Target) -> Clause:
    kind, key = _identifier(reader, target)
    comparator = _comparator(reader)
    numeric = kind == "attribute" and key in _NUMERIC_ATTRIBUTES[target]
    allowed = (
        _NUMERIC_COMPARATORS
        if numeric
        else _TAG_COMPARATORS
        if kind == "tag"
        else _STRING_COMPARATORS
    )
    label = f"tags.{key}" if kind == "tag" else key
    if comparator not in allowed:
        raise _bad(f"{label} takes one of {', '.join(sorted(allowed))}, not {comparator}")
    value: Value
    if comparator in ("IN", "NOT IN"):
        value = _list(reader)
    elif numeric:
        value = _integer(reader, label)
    else:
        value = _string(reader, label)
    return Clause(kind=kind, key=key, comparator=comparator, value=value)


def _string(reader: _Reader, label: str) -> str:
    token = reader.take("a value")
    if token.kind != "string":
        raise _bad(f"{label} compares with a quoted string, found {token.text!r} at {token.at}")
    return _unquote(token.text)


def _integer(reader: _Reader, label: str) -> int:
    token = reader.take("a number")
    text = _unquote(token.text) if token.kind == "string" else token.text
    if token.kind not in ("number", "string") or not re.fullmatch(r"-?[0-9]{1,19}", text):
        raise _bad(f"{label} compares with an integer, found {token.text!r} at {token.at}")
    number = int(text)
    if not -(2**63) <= number < 2**63:
        raise ValidationError("filter", "range", f"{label}: {text} is out of the int64 range")
    return number


def _list(reader: _Reader) -> tuple[str, ...]:
    opening = reader.take("'('")
    if opening.text != "(":
        raise _bad(f"IN takes a parenthesised list, found {opening.text!r} at {opening.at}")
    values: list[str] = []
    while True:
        token = reader.take("a quoted string")
        if token.kind != "string":
            raise _bad(f"IN lists quoted strings, found {token.text!r} at {token.at}")
        values.append(_unquote(token.text))
        if len(values) > MAX_IN_VALUES:
            raise ValidationError("filter", "too_many", f"IN lists at most {MAX_IN_VALUES} values")
        separator = reader.take("',' or ')'")
        if separator.text == ")":
            return tuple(values)
        if separator.text != ",":
            raise _bad(f"expected ',' or ')' at {separator.at}, found {separator.text!r}")


def names_prompt_tag(clauses: tuple[Clause, ...]) -> bool:
    """Whether a filter asks about prompts: only then does a search show them."""
    return any(c.kind == "tag" and c.key == PROMPT_TAG for c in clauses)


# --- order_by ---------------------------------------------------------------------------

_ORDER = re.compile(
    r"\s*(?:attribute\.)?(?P<key>`?[A-Za-z_]+`?)(?:\s+(?P<direction>ASC|DESC))?\s*", re.IGNORECASE
)


def parse_order_by(entries: tuple[str, ...] | list[str], target: Target) -> tuple[OrderKey, ...]:
    """``order_by`` entries, in order; a key given twice is refused (MLflow refuses it too)."""
    keys: list[OrderKey] = []
    for entry in entries:
        match = _ORDER.fullmatch(entry)
        key = match["key"].strip("`") if match else ""
        if match is None or key not in ORDER_KEYS[target]:
            raise ValidationError(
                "order_by",
                "syntax",
                f"invalid order_by {entry!r}: expected one of"
                f" {', '.join(ORDER_KEYS[target])}, optionally followed by ASC or DESC",
            )
        if any(k.key == key for k in keys):
            raise ValidationError("order_by", "unique", f"order_by names {key!r} twice")
        direction = (match["direction"] or "ASC").upper()
        keys.append(OrderKey(key=key, ascending=direction == "ASC"))
    return tuple(keys)


def with_tie_breakers(keys: tuple[OrderKey, ...], target: Target) -> tuple[OrderKey, ...]:
    """MLflow's orders, made total: its defaults when nothing is asked (models by name;
    versions newest change first), then name ascending and version descending, as
    MLflow breaks ties."""
    if not keys:
        keys = (
            (OrderKey(key="name", ascending=True),)
            if target is Target.MODELS
            else (OrderKey(key="last_updated_timestamp", ascending=False),)
        )
    named = {k.key for k in keys}
    extra = [OrderKey(key="name", ascending=True)] if "name" not in named else []
    if target is Target.VERSIONS and "version_number" not in named:
        extra.append(OrderKey(key="version_number", ascending=False))
    return (*keys, *extra)


def describe_order(keys: tuple[OrderKey, ...]) -> str:
    """A stable text for an order (what a page token is bound to)."""
    return ",".join(f"{k.key} {'ASC' if k.ascending else 'DESC'}" for k in keys)
