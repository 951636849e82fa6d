"""Per-principal limits on expensive reads: answers ``as_of`` a past log position. I/O: none.

An ``as_of`` read folds the log again (``projections.registry_state``), so one caller
sending many at once could take the database from everyone else. Each principal (token)
gets a token bucket: ``burst`` reads at once, refilled at ``rate`` per second. A read over
the limit is refused before any folding with 429 and ``Retry-After`` (whole seconds until
a read is allowed again). Other principals and all other reads are not affected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from litestar import Request

from service.api.problems import TooManyRequestsError
from service.settings import Settings

STATE_KEY = "expensive_reads"


class ExpensiveReadLimiter:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, as of when)

    @classmethod
    def from_settings(cls, settings: Settings) -> ExpensiveReadLimiter:
        return cls(settings.expensive_read_rate, settings.expensive_read_burst)

    def take(self, key: str) -> float | None:
        """Take one read for ``key``; None if allowed, else the seconds until one is."""
        now = self._clock()
        tokens, then = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        return None


async def limit_expensive_reads(request: Request[Any, Any, Any]) -> None:
    """Refuse (429) an ``as_of`` read over the principal's budget. Runs before the handler,
    after authentication, so the key is the authenticated token."""
    if "as_of" not in request.query_params:
        return
    limiter: ExpensiveReadLimiter | None = request.app.state.get(STATE_KEY)
    user = request.scope.get("user")
    if limiter is None or user is None:
        return
    wait = limiter.take(str(getattr(user, "token_id", user)))
    if wait is not None:
        raise TooManyRequestsError("as_of", wait)
