"""The promotion-expiry sweeper: records ``model.promotion_expired`` for overdue requests. I/O.

Nothing expires by itself in an event-sourced registry: a request past ``expires_at`` is
refused by the rules, but it stays open in the views until an event says it expired. This
loop finds overdue requests in the approvals view and sends ``ExpirePromotion``; the
decider checks the time again, so a run on two replicas at once records each expiry once
(the second is refused or finds nothing to do).
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from events.errors import DomainError
from events.model.commands import ExpirePromotion
from projections.views import approvals
from service.api.services import Services

log = logging.getLogger(__name__)
SWEEPER = "modelreg-expiry"


async def expire_overdue(services: Services) -> int:
    """Expire every overdue request; return how many were expired now."""
    registry = services.registry
    now = registry.now()
    try:
        pending = await approvals.open_requests(
            services.pool, approvals.PROJECTION.view_names(), now=now
        )
    except asyncpg.UndefinedTableError:
        return 0  # first start: the projection worker has not created the views yet
    overdue = [r for r in pending if r.overdue]
    expired = 0
    for request in overdue:
        try:
            written = await registry.execute(
                request.model_id,
                ExpirePromotion(actor=SWEEPER, now=now, request_id=request.request_id),
            )
        except DomainError as exc:  # decided or expired meanwhile (another replica, a person)
            log.debug("expiry of %s skipped: %s", request.request_id, exc)
            continue
        expired += bool(written.events)
    return expired


async def expire_overdue_forever(services: Services, interval: float) -> None:
    while True:
        count = await expire_overdue(services)
        if count:
            log.info("expired %d overdue promotion request(s)", count)
        await asyncio.sleep(interval)
