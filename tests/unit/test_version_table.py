"""A model's version table (events.model.state.VersionTable) reads like the dict of versions
it replaced, whatever the order of changes, and survives a snapshot's JSON. Pure."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.model.state import VERSION_BLOCK, ModelState, VersionState, VersionTable
from events.version_content import ArtifactEntry, VersionContent

CONTENT = VersionContent(
    artifacts=(ArtifactEntry(path="model.bin", sha256="0" * 64, size=1, external=True),)
)


def version(number: int, description: str = "") -> VersionState:
    return VersionState(
        number=number,
        content=CONTENT,
        content_digest="sha256:" + "1" * 64,
        registered_by="alice",
        description=description,
    )


# Numbers spread over several blocks, some changed more than once.
changes = st.lists(st.tuples(st.integers(1, 3 * VERSION_BLOCK), st.text(max_size=3)), max_size=60)


@given(changes)
def test_the_table_answers_what_a_dict_given_the_same_changes_answers(
    steps: list[tuple[int, str]],
) -> None:
    # given a table and a dict that received the same additions and replacements
    table, model = VersionTable(), dict[int, VersionState]()
    for number, description in steps:
        table = table.with_version(version(number, description))
        model = {**model, number: version(number, description)}
    # then every read agrees
    assert len(table) == len(model)
    assert sorted(table) == sorted(model)
    assert dict(table.items()) == model
    assert sorted(v.number for v in table.values()) == sorted(model)
    for number in range(3 * VERSION_BLOCK + 2):
        assert table.get(number) == model.get(number)
        assert (number in table) == (number in model)
    assert "1" not in table


@given(st.integers(0, 3 * VERSION_BLOCK), st.lists(st.integers(1, 3 * VERSION_BLOCK)))
def test_versions_registered_in_turn_are_read_in_turn(count: int, replaced: list[int]) -> None:
    # given versions 1..count added in turn, as registration numbers them, then some of
    # them replaced (a stage moved, a tag set)
    table = VersionTable()
    for number in range(1, count + 1):
        table = table.with_version(version(number))
    for number in (n for n in replaced if n <= count):
        table = table.with_version(version(number, "replaced"))
    # then they are read in ascending order, as the dict filled in turn was
    assert list(table) == list(range(1, count + 1))
    assert [n for n, _ in table.items()] == [v.number for v in table.values()] == list(table)


@given(changes)
def test_a_change_leaves_the_table_it_was_made_from_as_it_was(
    steps: list[tuple[int, str]],
) -> None:
    # given a table, and what it holds
    table = VersionTable()
    for number, description in steps:
        table = table.with_version(version(number, description))
    before = list(table.items())
    # when a version is added or replaced on it
    changed = table.with_version(version(VERSION_BLOCK + 1, "changed"))
    # then the old table still holds what it held, and the new one the change
    assert list(table.items()) == before
    assert changed[VERSION_BLOCK + 1].description == "changed"


def test_a_missing_number_is_a_key_error() -> None:
    table = VersionTable().with_version(version(3))
    assert table[3].number == 3
    with pytest.raises(KeyError) as missing:
        table[4]
    assert missing.value.args == (4,)


def test_a_state_with_versions_in_many_blocks_survives_its_snapshot() -> None:
    # given a model state whose versions span three blocks
    table = VersionTable()
    for number in range(1, 2 * VERSION_BLOCK + 10):
        table = table.with_version(version(number))
    state = ModelState(model_id="m1", name="churn", registered=True, versions=table)
    # when it is stored as a snapshot is and read back
    again = msgspec.json.decode(msgspec.json.encode(state), type=ModelState)
    # then it is the same state, with the same versions in the same order
    assert again == state
    assert list(again.versions) == list(range(1, 2 * VERSION_BLOCK + 10))
    assert len(again.versions.blocks) == 3
