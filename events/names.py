"""The documented safe character sets and size limits for names, keys and texts. Pure.

Every check raises ``ValidationError(field, rule, message)`` with a stable ``rule``:

    required    the value is empty
    pattern     a character outside the set, or a bad first character
    length      too long (the limit is in ``details["max"]``)
    reserved    an alias name the registry keeps for itself (``latest``, ``v<digits>``)
    finite      a float is NaN or infinite
    range       a number outside its allowed range
    too_many    a collection has more entries than allowed

All sets are ASCII so a name means the same thing in a URL, a SQL index and a log line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from events.errors import ValidationError

MODEL_NAME_MAX = 256
MODEL_ID_MAX = 64
TAG_KEY_MAX = 250
TAG_VALUE_MAX = 5000
MAX_TAGS = 100
ALIAS_MAX = 64
METRIC_KEY_MAX = 250
DATASET_NAME_MAX = 128
PLACE_NAME_MAX = 128
ACTOR_MAX = 256
DESCRIPTION_MAX_BYTES = 64 * 1024
COMMENT_MAX_BYTES = 16 * 1024

# Model names: letters, digits, '.', '_', '-'; first character a letter or a digit.
MODEL_NAME_CHARS = "A-Z a-z 0-9 . _ -"
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Ids chosen by the shell (model, request, deployment): uuid strings and hex fit.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# Tag, metric, parameter and dataset keys: letters, digits, '_', '.', ':', '/', '-'.
KEY_CHARS = "A-Z a-z 0-9 _ . : / -"
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]*")
# Aliases are lower case so `Champion` and `champion` can never name two pointers.
ALIAS_CHARS = "a-z 0-9 _ -"
_ALIAS = re.compile(r"[a-z][a-z0-9_-]*")
_RESERVED_ALIAS = re.compile(r"latest|v[0-9]+")
# Stage names are lower case too, so `Production` can never be a second `production`.
STAGE_NAME_MAX = 64
STAGE_NAME_CHARS = "a-z 0-9 _ -"
STAGE_NAME_PATTERN = r"^[a-z][a-z0-9_-]*$"  # the same rule, for OpenAPI documents
_STAGE_NAME = re.compile(r"[a-z][a-z0-9_-]*")
# Deployment environments and targets (`prod`, `eu-west-1/k8s:churn-api`).
_PLACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")


def _check(field: str, value: str, pattern: re.Pattern[str], max_len: int, chars: str) -> str:
    if not value:
        raise ValidationError(field, "required", f"{field} must not be empty")
    if len(value) > max_len:
        raise ValidationError(
            field, "length", f"{field} is longer than {max_len} characters", max=max_len
        )
    if pattern.fullmatch(value) is None:
        raise ValidationError(
            field, "pattern", f"{field} {value!r} may only use the characters {chars}", chars=chars
        )
    return value


def validate_model_name(name: str, field: str = "name") -> str:
    return _check(field, name, _MODEL_NAME, MODEL_NAME_MAX, MODEL_NAME_CHARS)


def validate_id(value: str, field: str) -> str:
    return _check(field, value, _ID, MODEL_ID_MAX, "A-Z a-z 0-9 _ -")


def validate_key(key: str, field: str, max_len: int = METRIC_KEY_MAX) -> str:
    """Metric, parameter and tag keys share one character set."""
    return _check(field, key, _KEY, max_len, KEY_CHARS)


def validate_dataset_name(name: str, field: str) -> str:
    return _check(field, name, _KEY, DATASET_NAME_MAX, KEY_CHARS)


def validate_place(value: str, field: str) -> str:
    return _check(field, value, _PLACE, PLACE_NAME_MAX, "A-Z a-z 0-9 . _ : / -")


def validate_alias(alias: str, field: str = "alias") -> str:
    _check(field, alias, _ALIAS, ALIAS_MAX, ALIAS_CHARS)
    if _RESERVED_ALIAS.fullmatch(alias):
        raise ValidationError(
            field,
            "reserved",
            f"alias {alias!r} is reserved: 'latest' and 'v<digits>' resolve by number",
        )
    return alias


def validate_stage_name(stage: str, field: str = "stage") -> str:
    return _check(field, stage, _STAGE_NAME, STAGE_NAME_MAX, STAGE_NAME_CHARS)


def validate_tags(tags: Mapping[str, str], field: str = "tags") -> None:
    if len(tags) > MAX_TAGS:
        raise ValidationError(field, "too_many", f"at most {MAX_TAGS} tags", max=MAX_TAGS)
    for key, value in tags.items():
        validate_key(key, f"{field}.{key}" if key else field, TAG_KEY_MAX)
        if len(value) > TAG_VALUE_MAX:
            raise ValidationError(
                f"{field}.{key}",
                "length",
                f"tag value longer than {TAG_VALUE_MAX} characters",
                max=TAG_VALUE_MAX,
            )


def validate_tag_keys(keys: Iterable[str], field: str = "keys") -> None:
    for index, key in enumerate(keys):
        validate_key(key, f"{field}[{index}]", TAG_KEY_MAX)


def validate_text(value: str, field: str, max_bytes: int, *, required: bool = False) -> str:
    """Free text (descriptions, comments, reasons): a size limit, and optionally non-empty."""
    if required and not value.strip():
        raise ValidationError(field, "required", f"{field} must not be empty")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ValidationError(
            field, "length", f"{field} is larger than {max_bytes} bytes", max=max_bytes
        )
    return value


def validate_description(value: str, field: str = "description") -> str:
    return validate_text(value, field, DESCRIPTION_MAX_BYTES)


def validate_comment(value: str, field: str = "comment", *, required: bool = False) -> str:
    return validate_text(value, field, COMMENT_MAX_BYTES, required=required)


def validate_actor(actor: str, field: str = "actor") -> str:
    if not actor.strip():
        raise ValidationError(field, "required", "the acting principal must be named")
    if len(actor) > ACTOR_MAX or not actor.isprintable():
        raise ValidationError(
            field, "pattern", f"{field} must be printable and at most {ACTOR_MAX} characters"
        )
    return actor


def validate_finite(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise ValidationError(field, "finite", f"{field} must be a finite number, not {value!r}")
    return value
