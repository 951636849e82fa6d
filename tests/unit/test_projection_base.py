"""The projection contract's pure parts: table specs and what a write must store."""

from __future__ import annotations

import pytest

from projections.base import Table, changed


def test_a_write_stores_only_rows_evolve_added_or_changed() -> None:
    # given the rows a batch loaded, and the rows evolve returned
    kept = ("alice", 1)
    loaded = {"a": kept, "b": ("bob", 1), "c": ("carol", 1)}
    evolved = {"a": kept, "b": ("bob", 2), "c": ("carol", 1), "d": ("dan", 1), "e": None}

    # then a write stores the changed row, the new one and the tombstone, not the equal ones
    assert changed(loaded, evolved) == {"b": ("bob", 2), "d": ("dan", 1), "e": None}


def test_a_table_declares_its_key() -> None:
    with pytest.raises(ValueError, match="declares no key"):
        Table("notes", "id int PRIMARY KEY", key=())


@pytest.mark.parametrize(
    ("name", "key"),
    [("notes; DROP TABLE x", ("id",)), ("notes", ("id, name",)), ("Notes", ("id",))],
)
def test_table_names_and_keys_are_plain_identifiers(name: str, key: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="bad identifier"):
        Table(name, "id int PRIMARY KEY", key=key)
