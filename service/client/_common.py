"""Pure parts shared by ``Client`` and ``AsyncClient``: URL paths, metric points and the
buffer that turns many ``log_metrics`` calls into few requests. I/O: none."""

from __future__ import annotations

import atexit
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

from service.client._transport import new_key
from service.client.models import Metric

log = logging.getLogger("modelreg.client")

# The server accepts 1 to 1,000 points per request.
MAX_BATCH = 1000

MetricsArg = Mapping[str, float] | Iterable[Metric]


def seg(value: str | int) -> str:
    """One URL path segment, percent-encoded (tag keys may contain '/')."""
    return quote(str(value), safe="")


def model_path(name: str) -> str:
    return f"/api/v1/models/{seg(name)}"


def version_path(name: str, version: int) -> str:
    return f"{model_path(name)}/versions/{int(version)}"


def aware(moment: datetime | None) -> datetime | None:
    """A time the API accepts: one without a zone is taken as local time (Python's rule)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.astimezone()


def points(
    metrics: MetricsArg,
    *,
    step: int = 0,
    dataset: str | None = None,
    timestamp: datetime | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Metric]:
    """Metric points from ``{"key": value}`` (sharing step, dataset and timestamp) or from
    ``Metric`` structs; every point gets a timestamp (when it was logged, by default), so
    buffering never shifts the time a value is recorded at. Non-finite values are refused
    here, where the caller can see which one."""
    at = aware(timestamp) or now()
    found: list[Metric] = []
    if isinstance(metrics, Mapping):
        items: Iterable[Metric] = (
            Metric(key=str(k), value=_finite(str(k), v), step=step, dataset=dataset, timestamp=at)
            for k, v in metrics.items()
        )
    else:
        items = metrics
    for item in items:
        if not isinstance(item, Metric):
            raise TypeError(
                f"metrics are a mapping of key to value or Metric structs, not {type(item).__name__}"
            )
        _finite(item.key, item.value)
        found.append(
            Metric(
                key=item.key,
                value=float(item.value),
                step=item.step,
                dataset=item.dataset,
                timestamp=aware(item.timestamp) or at,
            )
        )
    return found


def _finite(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"metric {key!r}: value must be a number, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"metric {key!r}: {number} is not a finite number")
    return number


@dataclass
class Batch:
    """Points of one version on their way; ``key`` is its Idempotency-Key, kept until
    the server took the batch, so sending it again can never log it twice."""

    model: str
    version: int
    points: list[Metric]
    key: str = field(default_factory=new_key)


class MetricBuffer:
    """Points logged but not sent yet, per (model, version), and sealed batches to send.

    ``due`` when a version holds ``batch_size`` points or the oldest unsent point waited
    ``interval`` seconds. Thread-safe (short critical sections, never held while sending).
    """

    def __init__(
        self,
        batch_size: int = MAX_BATCH,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"metrics_batch_size is 1 to {MAX_BATCH}")
        self.batch_size = batch_size
        self.interval = interval
        self.clock = clock
        self.open: dict[tuple[str, int], list[Metric]] = {}
        self.oldest: float | None = None
        self.outbox: deque[Batch] = deque()
        self.lock = threading.Lock()

    def add(self, model: str, version: int, found: list[Metric]) -> None:
        with self.lock:
            if not found:
                return
            self.open.setdefault((model, int(version)), []).extend(found)
            if self.oldest is None:
                self.oldest = self.clock()

    @property
    def pending(self) -> int:
        """Points not yet accepted by the server."""
        with self.lock:
            return sum(len(v) for v in self.open.values()) + sum(len(b.points) for b in self.outbox)

    def due(self) -> bool:
        with self.lock:
            if self.outbox:
                return True
            if any(len(v) >= self.batch_size for v in self.open.values()):
                return True
            return self.oldest is not None and self.clock() - self.oldest >= self.interval

    def seal(self) -> None:
        """Move every open point into batches of at most ``batch_size``."""
        with self.lock:
            for (model, version), found in self.open.items():
                for start in range(0, len(found), self.batch_size):
                    self.outbox.append(
                        Batch(model, version, found[start : start + self.batch_size])
                    )
            self.open.clear()
            self.oldest = None

    def next_batch(self) -> Batch | None:
        with self.lock:
            return self.outbox[0] if self.outbox else None

    def done(self, batch: Batch) -> None:
        """The server took the batch (or refused it for good): forget it."""
        with self.lock:
            if self.outbox and self.outbox[0] is batch:
                self.outbox.popleft()
            elif batch in self.outbox:
                self.outbox.remove(batch)


class ExitHook:
    """Flushes a (sync) client's buffered metrics when the interpreter exits, unless the
    client was closed first; holds the client weakly so it can still be collected."""

    def __init__(self, client: object) -> None:
        self.ref = weakref.ref(client)
        atexit.register(self.run)
        weakref.finalize(
            client, atexit.unregister, self.run
        )  # no entry left behind by a collected client

    def run(self) -> None:
        client = self.ref()
        if client is None or not getattr(client, "pending_metrics", 0):
            return
        try:
            client.flush()  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - at exit there is no one else to tell
            log.error("modelreg: %d metric points were not sent: %s", client.pending_metrics, exc)  # type: ignore[attr-defined]

    def cancel(self) -> None:
        atexit.unregister(self.run)


def flush_at_exit(client: object) -> ExitHook:
    return ExitHook(client)
