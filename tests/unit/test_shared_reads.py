"""Shared reads: concurrent callers share a fetch, and none is answered by a fetch that
began before it asked."""

from __future__ import annotations

import asyncio

import pytest

from service.commands.shared_reads import SharedReads


class Source:
    """A value that changes, read by a fetch that holds its answer until released."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.started: list[str] = []
        self.release = asyncio.Event()
        self.moved = asyncio.Condition()

    async def fetch(self, key: str) -> str:
        seen = self.value  # what a query sent now would find
        self.started.append(seen)
        async with self.moved:
            self.moved.notify_all()
        await self.release.wait()
        return f"{key}={seen}"


async def _until_started(source: Source, count: int) -> None:
    async with source.moved:
        await source.moved.wait_for(lambda: len(source.started) >= count)


async def test_a_call_made_while_a_fetch_is_in_flight_waits_for_a_fetch_that_sees_later_writes() -> (
    None
):
    # given a fetch in flight that read the value before it changed
    source = Source("old")
    reads = SharedReads(source.fetch)
    early = asyncio.create_task(reads.get("churn"))
    await _until_started(source, 1)

    # when the value changes and another call asks
    source.value = "new"
    late = asyncio.create_task(reads.get("churn"))
    source.release.set()

    # then the early call has the old answer and the late one the new: never the answer of
    # a fetch that was already under way when it asked
    assert await early == "churn=old"
    assert await late == "churn=new"


async def _two_callers(source: Source) -> tuple[asyncio.Task[str], asyncio.Task[str]]:
    """Two calls for one key made in the same turn of the loop, once a fetch has begun."""
    reads = SharedReads(source.fetch)
    first = asyncio.create_task(reads.get("churn"))
    second = asyncio.create_task(reads.get("churn"))
    await _until_started(source, 1)
    return first, second


async def test_calls_made_together_share_one_fetch() -> None:
    # given two calls made in the same turn of the loop, before any fetch began
    source = Source("v1")
    first, second = await _two_callers(source)

    # when the fetch answers
    source.release.set()

    # then both have its answer, and only one fetch ran
    assert await first == await second == "churn=v1"
    assert source.started == ["v1"]


async def test_other_keys_are_fetched_on_their_own() -> None:
    source = Source("v1")
    source.release.set()
    reads = SharedReads(source.fetch)

    answers = await asyncio.gather(reads.get("churn"), reads.get("fraud"))

    assert list(answers) == ["churn=v1", "fraud=v1"]


async def test_a_caller_that_goes_away_does_not_cancel_the_fetch_for_the_others() -> None:
    # given two callers waiting on one fetch
    source = Source("v1")
    leaving, staying = await _two_callers(source)

    # when one is cancelled (its client disconnected) before the fetch answers
    leaving.cancel()
    source.release.set()

    # then the other still gets the answer
    assert await staying == "churn=v1"
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_a_failing_fetch_raises_its_error_to_every_caller_it_answers() -> None:
    # given a fetch that fails
    class GoneError(Exception):
        pass

    async def fetch(key: str) -> str:
        await asyncio.sleep(0)
        raise GoneError(key)

    reads: SharedReads[str, str] = SharedReads(fetch)

    # when two callers share it
    answers = await asyncio.gather(reads.get("churn"), reads.get("churn"), return_exceptions=True)

    # then both see the error, and the next call fetches again
    assert [type(a) for a in answers] == [GoneError, GoneError]
    with pytest.raises(GoneError):
        await reads.get("churn")
