"""The in-memory tally of refusals: identical refusals in a minute count into one key, and the
number of distinct keys held between two writes is bounded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.denials.recorder import OVERFLOW_REASON, DenialRecorder

T0 = datetime(2026, 12, 5, 10, 0, 5, tzinfo=UTC)


def refuse(
    recorder: DenialRecorder, at: datetime, principal: str = "eve", route: str = "/x"
) -> None:
    recorder.record(
        at,
        principal=principal,
        token_id="t1",
        status=403,
        code="permission_denied",
        method="POST",
        route=route,
        model="churn",
        permission="write",
        reason="no",
        client="127.0.0.1",
    )


def test_identical_refusals_in_one_minute_are_one_count_and_the_next_minute_is_another() -> None:
    recorder = DenialRecorder()
    # when the same refusal happens three times in a minute and once in the next
    for seconds in (0, 20, 50):
        refuse(recorder, T0 + timedelta(seconds=seconds))
    refuse(recorder, T0 + timedelta(seconds=60))
    # then two keys are held, with the counts and the first and last moments
    taken = recorder.take()
    tallies = sorted((k.minute, t.count, t.first_at, t.last_at) for k, t in taken.items())
    assert tallies == [
        (T0.replace(second=0), 3, T0, T0 + timedelta(seconds=50)),
        (
            T0.replace(second=0) + timedelta(minutes=1),
            1,
            T0 + timedelta(seconds=60),
            T0 + timedelta(seconds=60),
        ),
    ]
    # and the recorder starts empty again
    assert len(recorder) == 0


def test_past_the_bound_new_refusals_are_counted_in_one_overflow_key() -> None:
    recorder = DenialRecorder(max_keys=2)
    # when a scanner makes five distinct refusals in one minute
    for n in range(5):
        refuse(recorder, T0, principal=f"p{n}")
    # then two are kept one by one and the other three are counted together
    taken = recorder.take()
    assert sorted(k.principal for k in taken if k.code != "overflow") == ["p0", "p1"]
    overflow = [(k, t) for k, t in taken.items() if k.code == "overflow"]
    assert [(k.reason, t.count) for k, t in overflow] == [(OVERFLOW_REASON, 3)]
    # and a refusal already held still counts into its own key
    refuse(recorder, T0, principal="p0")
    refuse(recorder, T0, principal="p0")
    assert [t.count for k, t in recorder.take().items() if k.principal == "p0"] == [2]


def test_tallies_given_back_after_a_failed_write_merge_with_new_ones() -> None:
    recorder = DenialRecorder()
    refuse(recorder, T0)
    failed = recorder.take()
    # when a refusal arrives while the write fails, and the failed tallies are given back
    refuse(recorder, T0 + timedelta(seconds=1))
    recorder.give_back(failed)
    # then nothing is lost: one key, counted twice
    assert [t.count for t in recorder.take().values()] == [2]
