"""Sealed cursors (issue 13, item 6): what the API hands out can only come back unchanged."""

from __future__ import annotations

import pytest

from projections.paging import CursorSeal, InvalidCursorError, decode_cursor, encode_cursor

SEAL = CursorSeal(b"k" * 32)


def test_a_sealed_cursor_opens_to_the_plain_cursor_inside() -> None:
    plain = encode_cursor("models:name", ("churn", "m1"))
    sealed = SEAL.seal(plain)
    assert sealed is not None and sealed != plain
    assert SEAL.open(sealed) == plain
    assert decode_cursor(SEAL.open(sealed) or "", "models:name", tuple[str, str]) == ("churn", "m1")
    assert SEAL.seal(None) is None and SEAL.open(None) is None and SEAL.open("") is None


@pytest.mark.parametrize(
    "bad",
    [
        "plain-text",
        "!!",
        SEAL.seal(encode_cursor("models:name", ("a", "b")))[:-3],  # type: ignore[index]
        CursorSeal(b"o" * 32).seal(encode_cursor("models:name", ("a", "b"))),  # another key
        encode_cursor("models:name", ("zzz", "m9")),  # unsealed, as 0.2 handed them out
        "A" * 5000,
    ],
)
def test_anything_but_an_unchanged_sealed_cursor_is_refused(bad: str) -> None:
    with pytest.raises(InvalidCursorError):
        SEAL.open(bad)
