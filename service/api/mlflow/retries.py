"""Idempotency for MLflow's retried creates, which carry no key. I/O: none.

MLflow's client retries a POST that answered 5xx (or timed out) up to seven times with a
growing backoff, and sends no idempotency key. A ``registered-models/create`` or
``model-versions/create`` whose answer was lost would then run twice: a second version,
or a RESOURCE_ALREADY_EXISTS for a model that was in fact just created.

The rule: without an ``Idempotency-Key`` header, a create's key is derived from who sent
it, which route, and its body in canonical form (keys sorted), within a window:

    seed = sha256(principal NUL route NUL canonical body) : floor(now / WINDOW)

and the events the create records get ids from that seed (as with an explicit key), so a
retry, or a copy racing the first on another replica, records nothing new and answers
what the first recorded. A request also looks for the seed of the previous window, so a
retry that crosses a window boundary is still recognised: identical creates from one
principal are one create when they arrive within WINDOW seconds of each other, and may
be when within 2 x WINDOW; later, they are two. WINDOW is 15 minutes: MLflow's seven
retries wait about 4 minutes between them, plus up to 120 s per timed-out attempt.

Only creates get a derived key. The other MLflow writes are set-like (a tag, an alias, a
stage: doing them twice changes nothing) and a derived key would wrongly merge, say,
"set k=a", "set k=b", "set k=a" into two writes.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import msgspec

WINDOW_SECONDS = 15 * 60


def derived_seeds(principal: str, route: str, body: object, now: datetime) -> tuple[str, str]:
    """The seed of this window and of the previous one, for a request without a key."""
    canonical = msgspec.json.encode(msgspec.to_builtins(body), order="sorted")
    digest = hashlib.sha256(
        principal.encode() + b"\x00" + route.encode() + b"\x00" + canonical
    ).hexdigest()
    window = int(now.timestamp()) // WINDOW_SECONDS
    return f"mlflow:{digest}:{window}", f"mlflow:{digest}:{window - 1}"
