"""MLflow's search grammar and stage names: parsed as MLflow clients send them, refused with a
ValidationError naming the field otherwise (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.errors import ValidationError
from events.mlflow_filter import (
    Clause,
    OrderKey,
    Target,
    describe_order,
    names_prompt_tag,
    parse_filter,
    parse_order_by,
    with_tie_breakers,
)
from events.mlflow_stages import MLFLOW_STAGES, stage_from_mlflow, stage_to_mlflow
from events.stages import Stage


def test_the_filters_mlflow_clients_send_parse_into_clauses() -> None:
    assert parse_filter("name = 'churn'", Target.MODELS) == (
        Clause(kind="attribute", key="name", comparator="=", value="churn"),
    )
    both = parse_filter(
        "name ILIKE '%Churn%' and tags.`mlflow.prompt.is_prompt` != 'true'", Target.MODELS
    )
    assert [(c.kind, c.key, c.comparator, c.value) for c in both] == [
        ("attribute", "name", "ILIKE", "%Churn%"),
        ("tag", "mlflow.prompt.is_prompt", "!=", "true"),
    ]
    versions = parse_filter(
        "run_id IN ('a', \"b\") AND version_number >= 3 AND attribute.source_path LIKE 's3://%'"
        " AND tags.team.name = 'risk' AND tag.\"odd key\" <> 'x'",
        Target.VERSIONS,
    )
    assert [(c.key, c.comparator, c.value) for c in versions] == [
        ("run_id", "IN", ("a", "b")),
        ("version_number", ">=", 3),
        ("source_path", "LIKE", "s3://%"),
        ("team.name", "=", "risk"),
        ("odd key", "!=", "x"),
    ]
    assert (
        parse_filter("name = 'it''s' AND name != \"say \\\"hi\\\"\"", Target.MODELS)[0].value
        == "it's"
    )
    assert (
        parse_filter("creation_timestamp > 1700000000000", Target.MODELS)[0].value == 1700000000000
    )
    assert parse_filter(None, Target.MODELS) == parse_filter("  ", Target.VERSIONS) == ()
    assert names_prompt_tag(both) and not names_prompt_tag(versions)


@pytest.mark.parametrize(
    ("text", "target", "rule"),
    [
        ("name = 'a' OR name = 'b'", Target.MODELS, "syntax"),
        ("name = 1", Target.MODELS, "syntax"),
        ("name > 'a'", Target.MODELS, "syntax"),
        ("run_id = 'r'", Target.MODELS, "syntax"),  # a version attribute, not a model's
        ("version_number = 'x'", Target.VERSIONS, "syntax"),
        ("version_number = 99999999999999999999", Target.VERSIONS, "syntax"),
        ("tags.k > 'a'", Target.VERSIONS, "syntax"),
        ("tags.k IN ('a')", Target.VERSIONS, "syntax"),
        ("tags. = 'x'", Target.MODELS, "syntax"),
        ("tags.`` = 'x'", Target.MODELS, "syntax"),
        ("metrics.auc > 1", Target.VERSIONS, "syntax"),
        ("name IN ()", Target.MODELS, "syntax"),
        ("name IN ('a' 'b')", Target.MODELS, "syntax"),
        ("name = 'open", Target.MODELS, "syntax"),
        ("name =", Target.MODELS, "syntax"),
        ("name = 'a' AND", Target.MODELS, "syntax"),
        ("name NOT 'a'", Target.MODELS, "syntax"),
        ("name = 'a'; drop table x", Target.MODELS, "syntax"),
        ("x" * 5000, Target.MODELS, "length"),
        (" AND ".join(["name = 'a'"] * 51), Target.MODELS, "too_many"),
    ],
)
def test_a_malformed_filter_is_refused_naming_the_filter(
    text: str, target: Target, rule: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_filter(text, target)
    assert (refused.value.field, refused.value.rule) == ("filter", rule)


def test_orders_take_mlflows_keys_and_become_total_with_its_tie_breakers() -> None:
    asked = parse_order_by(["last_updated_timestamp DESC", "name"], Target.MODELS)
    assert asked == (
        OrderKey(key="last_updated_timestamp", ascending=False),
        OrderKey(key="name", ascending=True),
    )
    assert describe_order(with_tie_breakers((), Target.MODELS)) == "name ASC"
    assert (
        describe_order(with_tie_breakers((), Target.VERSIONS))
        == "last_updated_timestamp DESC,name ASC,version_number DESC"
    )
    by_number = parse_order_by(["version_number asc"], Target.VERSIONS)
    assert describe_order(with_tie_breakers(by_number, Target.VERSIONS)) == (
        "version_number ASC,name ASC"
    )
    for bad, target in (
        (["version_number"], Target.MODELS),
        (["name sideways"], Target.MODELS),
        (["name", "name DESC"], Target.MODELS),
        (["tags.team"], Target.VERSIONS),
    ):
        with pytest.raises(ValidationError) as refused:
            parse_order_by(bad, target)
        assert refused.value.field == "order_by"


def test_stages_map_both_ways_case_insensitively() -> None:
    for name, stage in MLFLOW_STAGES.items():
        assert stage_from_mlflow(name.upper()) is stage
        assert stage_to_mlflow(stage) == name
    assert {stage_from_mlflow(n) for n in MLFLOW_STAGES} == set(Stage)
    assert stage_from_mlflow("none") is Stage.DEVELOPMENT
    with pytest.raises(ValidationError) as refused:
        stage_from_mlflow("Shipping")
    assert (refused.value.field, refused.value.rule) == ("stage", "enum")


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)
_KEY = st.from_regex(
    r"[A-Za-z_][A-Za-z0-9_]{0,10}(\.[A-Za-z_][A-Za-z0-9_]{0,5}){0,2}", fullmatch=True
)


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# No deadline: a loaded CI machine must not fail a test for being slow.
@settings(deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("name"), st.sampled_from(["=", "!=", "LIKE", "ILIKE"]), _TEXT),
            st.tuples(_KEY.map(lambda k: f"tags.`{k}`"), st.sampled_from(["=", "LIKE"]), _TEXT),
            st.tuples(
                st.just("version_number"),
                st.sampled_from(["=", "<", ">=", "!="]),
                st.integers(-(2**62), 2**62),
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_well_formed_filter_round_trips_its_values(
    parts: list[tuple[str, str, str | int]],
) -> None:
    text = " AND ".join(
        f"{lhs} {op} {_quoted(value) if isinstance(value, str) else value}"
        for lhs, op, value in parts
    )
    clauses = parse_filter(text, Target.VERSIONS)
    assert [c.value for c in clauses] == [value for _, _, value in parts]
    assert [c.comparator for c in clauses] == [op for _, op, _ in parts]


def _outcome(text: str, target: Target) -> str:
    """``parsed``, or the field a refusal names."""
    try:
        parse_filter(text, target)
    except ValidationError as refused:
        return refused.field
    return "parsed"


@settings(deadline=None)
@given(st.text(max_size=80))
def test_any_text_parses_or_is_refused_as_a_validation_error(text: str) -> None:
    # anything else (an IndexError, a RecursionError) would be a 5xx to MLflow's retrying client
    assert {_outcome(text, target) for target in Target} <= {"parsed", "filter"}
