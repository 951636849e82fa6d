"""Recorded events with environments keep their meaning: ``golden_history/environments.jsonl``
was written by the code that introduced environments (production in eu and us, v7 in both,
v8 taking eu, v9 taking us so v7 leaves its last environment, all through approved
requests). It is what stored events look like and is never edited; the ``.state.json``
beside it is what that code folds them to."""

from __future__ import annotations

import json
from pathlib import Path

from events.catalogue import CODEC
from events.model.decider import MODEL
from events.model.events import ModelEvent
from events.stages import Stage
from tests.support.golden_state import as_recorded

GOLDEN = Path(__file__).parent / "golden_history"


def _recorded() -> list[tuple[str, int, bytes]]:
    lines = (GOLDEN / "environments.jsonl").read_text().splitlines()
    return [
        (row["event_type"], row["schema_version"], row["data"].encode())
        for row in map(json.loads, lines)
    ]


def _decoded(recorded: list[tuple[str, int, bytes]]) -> list[ModelEvent]:
    return [CODEC.decode_data(t, v, data) for t, v, data in recorded]  # type: ignore[misc]


def test_a_history_with_environments_folds_to_the_recorded_state() -> None:
    # given the bytes of events recorded with environments
    recorded = _recorded()
    # when today's code decodes and folds them
    state = MODEL.fold(_decoded(recorded))
    # then the state is the one the code that wrote them folded
    assert as_recorded(state) + b"\n" == (GOLDEN / "environments.state.json").read_bytes()
    assert {n: (v.stage, v.environment_names()) for n, v in state.versions.items()} == {
        7: (Stage.ARCHIVED, ()),
        8: (Stage.PRODUCTION, ("eu",)),
        9: (Stage.PRODUCTION, ("us",)),
    }


def test_events_with_environments_re_encode_to_their_stored_bytes() -> None:
    recorded = _recorded()
    assert [CODEC.encode(event) for event in _decoded(recorded)] == [d for _, _, d in recorded]
