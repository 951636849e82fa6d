"""What the error handlers call when they refuse a request: a bounded, in-memory tally. I/O:
none (the flusher writes it).

Recording must never slow or fail the refusal it describes, and a flood of refusals (a
scanner, a misconfigured CI job retrying with a revoked token) must not grow anything
without bound. So ``record`` only counts into a dict keyed by everything the table keys a
row by (identical refusals in one minute are one row with a count), and once ``max_keys``
distinct refusals wait to be written, further new ones are counted in a single overflow row
for the minute instead of being kept one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

MAX_REASON = 500
OVERFLOW_REASON = "more distinct refusals than are kept per flush; counted here"


@dataclass(frozen=True, slots=True)
class DenialKey:
    minute: datetime
    principal: str  # "" when the caller was not authenticated
    token_id: str
    status: int
    code: str
    method: str
    route: str  # the route's template: a scanner's random paths do not become rows
    model: str
    permission: str
    reason: str
    client: str


@dataclass(slots=True)
class Tally:
    count: int
    first_at: datetime
    last_at: datetime

    def merge(self, other: Tally) -> None:
        self.count += other.count
        self.first_at = min(self.first_at, other.first_at)
        self.last_at = max(self.last_at, other.last_at)


class DenialRecorder:
    def __init__(self, *, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._pending: dict[DenialKey, Tally] = {}

    def record(
        self,
        at: datetime,
        *,
        principal: str,
        token_id: str,
        status: int,
        code: str,
        method: str,
        route: str,
        model: str,
        permission: str,
        reason: str,
        client: str,
    ) -> None:
        key = DenialKey(
            minute=at.replace(second=0, microsecond=0),
            principal=principal,
            token_id=token_id,
            status=status,
            code=code,
            method=method,
            route=route,
            model=model,
            permission=permission,
            reason=reason[:MAX_REASON],
            client=client,
        )
        self._add(key, Tally(1, at, at))

    def _add(self, key: DenialKey, tally: Tally) -> None:
        held = self._pending.get(key)
        if held is not None:
            held.merge(tally)
            return
        if len(self._pending) >= self.max_keys:
            key = overflow_key(key.minute)
            held = self._pending.get(key)
            if held is not None:
                held.merge(tally)
                return
        self._pending[key] = tally

    def take(self) -> dict[DenialKey, Tally]:
        """Everything waiting to be written; the recorder starts empty again."""
        taken, self._pending = self._pending, {}
        return taken

    def give_back(self, untaken: dict[DenialKey, Tally]) -> None:
        """A write that failed: its tallies wait for the next one (still bounded)."""
        for key, tally in untaken.items():
            self._add(key, tally)

    def __len__(self) -> int:
        return len(self._pending)


def overflow_key(minute: datetime) -> DenialKey:
    return DenialKey(
        minute=minute,
        principal="",
        token_id="",
        status=403,
        code="overflow",
        method="",
        route="",
        model="",
        permission="",
        reason=OVERFLOW_REASON,
        client="",
    )
