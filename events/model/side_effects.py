"""What else a decision moved besides what was asked: the receipt's "also moved". Pure.

Promoting a version demotes the production one, archiving a version drops its aliases, and
a rollback carries the demoted version's aliases along. Those moves are legitimate (the
policy allowed the decision, and protected aliases are never dropped this way), but a
caller must not learn about them from an outage: the write's receipt lists them.
"""

from __future__ import annotations

from collections.abc import Sequence

from events.base import Event
from events.model.events import AliasRemovalCause, AliasRemoved, AliasSet, StageTransitioned
from events.stages import TransitionKind, placement


def side_effects(events: Sequence[Event]) -> list[str]:
    """One sentence per demotion, alias dropped by archiving, or alias that followed a rollback."""
    rollback = any(
        isinstance(e, StageTransitioned) and e.kind == TransitionKind.ROLLBACK for e in events
    )
    described: list[str] = []
    for event in events:
        if isinstance(event, StageTransitioned) and event.kind == TransitionKind.DEMOTION:
            source = placement(event.from_stage, event.left_environment())
            described.append(
                f"version {event.version}: {source} -> {event.to_stage} (demoted)"
                if event.from_stage != event.to_stage
                else f"version {event.version}: out of {source}, still in"
                f" {event.to_stage} elsewhere (demoted)"
            )
        elif isinstance(event, AliasRemoved) and event.cause == AliasRemovalCause.VERSION_ARCHIVED:
            described.append(
                f"alias {event.alias!r}: removed from version {event.version} (archived)"
            )
        elif isinstance(event, AliasSet) and rollback:
            described.append(
                f"alias {event.alias!r}: version {event.previous_version} -> {event.version}"
                " (follows the rollback)"
            )
    return described
