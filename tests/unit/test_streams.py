"""Stream ids are built and parsed in ``events.streams`` only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.errors import ValidationError
from events.streams import (
    REGISTRY_POLICY_STREAM,
    metrics_of,
    metrics_stream,
    model_id_of,
    model_id_or_none,
    model_stream,
    model_streams_bounds,
    name_key,
    name_of_key,
    stream_type,
    token_id_of,
    token_stream,
)

ROOT = Path(__file__).resolve().parents[2]
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True)


@given(model_id=ids, version=st.integers(min_value=1, max_value=2**31 - 1))
def test_every_built_stream_id_parses_back_to_what_built_it(model_id: str, version: int) -> None:
    assert model_id_of(model_stream(model_id)) == model_id
    assert model_id_of(metrics_stream(model_id, version)) == model_id
    assert metrics_of(metrics_stream(model_id, version)) == (model_id, version)
    assert stream_type(model_stream(model_id)) == "model"
    assert stream_type(metrics_stream(model_id, version)) == "metrics"
    assert token_id_of(token_stream(model_id)) == model_id


def test_streams_that_belong_to_no_model_say_so() -> None:
    assert model_id_or_none(REGISTRY_POLICY_STREAM) is None
    assert model_id_or_none(token_stream("t1")) is None
    with pytest.raises(ValueError, match="not a model's stream"):
        model_id_of(token_stream("t1"))
    with pytest.raises(ValueError, match="not a metrics stream"):
        metrics_of(model_stream("m1"))


def test_ids_with_a_colon_cannot_build_a_stream_id() -> None:
    with pytest.raises(ValidationError):
        model_stream("a:b")


@given(model_id=ids, other=ids, version=st.integers(min_value=1, max_value=10_000))
def test_the_bounds_of_a_models_streams_hold_its_metrics_streams_and_no_other_models(
    model_id: str, other: str, version: int
) -> None:
    own, low, high = model_streams_bounds(model_id)
    within = low.encode() <= metrics_stream(model_id, version).encode() < high.encode()
    assert own == model_stream(model_id) and within
    if other != model_id:
        stranger = metrics_stream(other, version).encode()
        assert not (low.encode() <= stranger < high.encode())


def test_a_name_key_names_its_model_and_nothing_else_does() -> None:
    assert name_of_key(name_key("churn:eu")) == "churn:eu"
    assert name_of_key("promotion:r1") is None


def test_no_module_outside_events_streams_spells_out_a_stream_id() -> None:
    spelled = re.compile(r"""f?["'](model|metrics|token|policy):""")
    split = re.compile(r"stream_id\.(split|partition|rsplit)\(")
    offenders = []
    for package in ("events", "eventlog", "projections", "service"):
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "events" / "streams.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if spelled.search(line) or split.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "build and parse stream ids with events.streams:\n" + "\n".join(offenders)
