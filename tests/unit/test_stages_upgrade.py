"""Upgrade path: a history recorded before stages became configurable folds the same.

``golden_history/stages_before_custom.jsonl`` was written by the code of the fixed
four-stage enum (a promotion with an approval, a rollback, an archive, an admin restore, a
model policy, a demotion): it is what stored events look like and is never edited. The
``.state.json`` beside it is what that code (main just before custom stages were merged)
folds them to; should ``ModelState`` gain a field later, regenerate it with the code of
the commit before that change, never with the code under test.
"""

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
    lines = (GOLDEN / "stages_before_custom.jsonl").read_text().splitlines()
    return [
        (row["event_type"], row["schema_version"], row["data"].encode())
        for row in map(json.loads, lines)
    ]


def _fold(recorded: list[tuple[str, int, bytes]]) -> list[ModelEvent]:
    return [CODEC.decode_data(t, v, data) for t, v, data in recorded]  # type: ignore[misc]


def test_a_history_recorded_under_the_stage_enum_folds_to_the_same_state() -> None:
    # given the bytes of events stored before custom stages
    recorded = _recorded()
    # when today's code decodes and folds them
    state = MODEL.fold(_fold(recorded))
    # then the state is byte for byte the one the old code folded
    assert as_recorded(state) + b"\n" == (GOLDEN / "stages_before_custom.state.json").read_bytes()
    assert {n: v.stage for n, v in state.versions.items()} == {
        1: Stage.STAGING,
        2: Stage.ARCHIVED,
        3: Stage.PRODUCTION,
    }
    assert (state.production, state.previous_production) == (3, 1)


def test_old_events_re_encode_to_their_stored_bytes() -> None:
    # given the stored events
    recorded = _recorded()
    # when each is decoded and encoded again
    again = [CODEC.encode(event) for event in _fold(recorded)]
    # then the bytes are unchanged, so hashes and the golden files still hold
    assert again == [data for _, _, data in recorded]
