"""The documented character sets and limits for names, keys and texts."""

from __future__ import annotations

import pytest

from events.errors import ValidationError
from events.names import (
    DESCRIPTION_MAX_BYTES,
    MAX_TAGS,
    TAG_VALUE_MAX,
    validate_actor,
    validate_alias,
    validate_description,
    validate_finite,
    validate_id,
    validate_key,
    validate_model_name,
    validate_tags,
)


@pytest.mark.parametrize(
    "name", ["churn", "Churn-v2", "fraud.detector_3", "a", "9lives", "x" * 256]
)
def test_a_model_name_from_the_safe_set_is_accepted(name: str) -> None:
    assert validate_model_name(name) == name


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "required"),
        ("x" * 257, "length"),
        ("-churn", "pattern"),
        (".hidden", "pattern"),
        ("churn model", "pattern"),
        ("team/churn", "pattern"),
        ("churné", "pattern"),
        ("churn\n", "pattern"),
    ],
)
def test_a_model_name_outside_the_safe_set_is_rejected_naming_the_rule(
    name: str, rule: str
) -> None:
    with pytest.raises(ValidationError) as error:
        validate_model_name(name)
    assert (error.value.field, error.value.rule) == ("name", rule)


@pytest.mark.parametrize("alias", ["latest", "v1", "v42", "v0"])
def test_reserved_alias_names_are_rejected(alias: str) -> None:
    with pytest.raises(ValidationError) as error:
        validate_alias(alias)
    assert error.value.rule == "reserved"


@pytest.mark.parametrize("alias", ["champion", "challenger-2", "v1a", "vnext", "latest_good"])
def test_lower_case_aliases_that_are_not_reserved_are_accepted(alias: str) -> None:
    assert validate_alias(alias) == alias


@pytest.mark.parametrize("alias", ["Champion", "2nd", "_x", "a" * 65, "with space"])
def test_aliases_outside_the_alias_set_are_rejected(alias: str) -> None:
    with pytest.raises(ValidationError) as error:
        validate_alias(alias)
    assert error.value.rule in {"pattern", "length"}


@pytest.mark.parametrize(
    "key", ["auc", "val/auc", "loss:train", "_step_time", "f1.macro", "k" * 250]
)
def test_metric_keys_from_the_key_set_are_accepted(key: str) -> None:
    assert validate_key(key, "key") == key


@pytest.mark.parametrize("key", ["", "a b", "-x", "k" * 251, "auc$", "ключ"])
def test_metric_keys_outside_the_key_set_are_rejected(key: str) -> None:
    with pytest.raises(ValidationError):
        validate_key(key, "key")


def test_a_tag_value_longer_than_the_limit_is_rejected_naming_the_tag() -> None:
    with pytest.raises(ValidationError) as error:
        validate_tags({"team": "x" * (TAG_VALUE_MAX + 1)})
    assert (error.value.field, error.value.rule) == ("tags.team", "length")


def test_more_tags_than_the_limit_are_rejected() -> None:
    with pytest.raises(ValidationError) as error:
        validate_tags({f"k{i}": "v" for i in range(MAX_TAGS + 1)})
    assert error.value.rule == "too_many"


def test_a_description_of_64_kib_is_accepted_and_one_byte_more_is_not() -> None:
    validate_description("x" * DESCRIPTION_MAX_BYTES)
    with pytest.raises(ValidationError) as error:
        validate_description("x" * (DESCRIPTION_MAX_BYTES - 1) + "é")
    assert error.value.rule == "length"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_rejected(value: float) -> None:
    with pytest.raises(ValidationError) as error:
        validate_finite(value, "x")
    assert error.value.rule == "finite"


def test_ids_are_uuid_like_and_never_contain_a_colon() -> None:
    assert validate_id("0b5e6c1f-2d3a-4b5c-8d9e-0f1a2b3c4d5e", "model_id")
    with pytest.raises(ValidationError):
        validate_id("model:1", "model_id")


def test_an_actor_must_be_named_and_printable() -> None:
    with pytest.raises(ValidationError):
        validate_actor(" ")
    with pytest.raises(ValidationError):
        validate_actor("alice\x00")
