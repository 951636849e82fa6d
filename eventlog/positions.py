"""Where a write landed in the global log, for read-your-writes. I/O: Postgres.

An append commits first and is sealed (given its log position) a few milliseconds later
by the sealer. A write response carries that position (``Modelreg-Position``), so it
waits here, bounded, for the seal; a read can then ask the views to reach it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import asyncpg

from eventlog.waiting import Bell


class SealSignal(Bell):
    """Wakes the writes waiting for their seal when the sealer has sealed a batch, so they
    look once instead of polling the log on a timer. The runtime rings it from a LISTEN on
    the sealer's NOTIFY (wherever the sealer runs); while that is down, nobody rings, and
    the waits fall back to polling."""

    _REMEMBERED = 10_000  # positions of the latest sealed events kept for their writers

    def __init__(self) -> None:
        super().__init__()
        self._last_handed = -1e9
        self._positions: dict[int, int] = {}

    def sealed(self, seqs: Sequence[int], first_position: int) -> None:
        """A sealer of this process committed ``seqs`` at ``first_position`` onwards: the
        writes waiting for them take their positions from here, with no query."""
        positions = self._positions
        for offset, seq in enumerate(seqs):
            positions[seq] = first_position + offset
        excess = len(positions) - self._REMEMBERED
        if excess > 0:  # a dict keeps insertion order: drop the oldest
            for seq in list(itertools.islice(positions, excess)):
                del positions[seq]
        self._last_handed = asyncio.get_running_loop().time()
        self.notify()

    def position_of(self, seq: int) -> int | None:
        """The log position of ``seq`` if a sealer of this process sealed it lately."""
        return self._positions.get(seq)

    def handing(self) -> bool:
        """Has a sealer of this process handed over what it sealed lately? Then a ring
        that leaves a write's position unknown was another write's seal."""
        return asyncio.get_running_loop().time() - self._last_handed < 1.0


async def sealed_position(
    pool: asyncpg.Pool,
    seq: int,
    *,
    timeout: float = 5.0,
    signal: SealSignal | None = None,
    safety_interval: float = 0.02,
) -> int | None:
    """The log position of the event with ``seq``, once sealed; ``None`` after ``timeout``
    (the sealer is down or far behind: the write itself is safe and will be sealed).

    While ``signal`` rings, the log is looked at when it rings and at least every
    ``safety_interval`` seconds, in case a NOTIFY was lost. While a sealer of this process
    hands over what it seals (``SealSignal.handing``), a ring is not followed by a look:
    had it sealed this write, the position would be known; under load most rings are
    other writes' seals, and their looks were a query per write in vain. The timer still
    looks, for a sealer elsewhere (leadership moved within the last second)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.001
    looked = rang = False
    while True:
        sealed = signal.current() if signal is not None else None
        if signal is not None and (known := signal.position_of(seq)) is not None:
            return known
        # Right after the commit the event cannot be sealed yet: while the signal rings,
        # the first look waits for the next seal instead of querying in vain.
        in_vain = signal is not None and (
            (not looked and signal.ringing()) or (rang and signal.handing())
        )
        if not in_vain:
            position: int | None = await pool.fetchval(
                "SELECT log_position FROM event_log WHERE seq = $1", seq
            )
            if position is not None:
                return position
        looked = True
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        if signal is None or sealed is None:
            await asyncio.sleep(min(delay, remaining))
        else:
            # The sealer's NOTIFY wakes us at once; while it rings, the timer is only a
            # safety net, so the log is not polled every few milliseconds per write.
            wait = safety_interval if signal.ringing() else delay
            try:
                await asyncio.wait_for(sealed.wait(), timeout=min(wait, remaining))
                rang = True
            except TimeoutError:
                rang = False
        delay = min(delay * 2, 0.02)
