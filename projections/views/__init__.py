"""The read models, one module each; ``ALL`` is the registry the worker, rebuilds and time
travel use. A new view is a module here plus one line in ``ALL``: nothing is discovered
by scanning, so what runs is what this tuple says."""

from __future__ import annotations

from projections.base import Projection
from projections.views import (
    approvals,
    audit_timeline,
    deployments,
    metric_history,
    model_catalogue,
    model_versions,
    stage_timeline,
)

ALL: tuple[Projection, ...] = (
    approvals.PROJECTION,
    audit_timeline.PROJECTION,
    deployments.PROJECTION,
    metric_history.PROJECTION,
    model_catalogue.PROJECTION,
    model_versions.PROJECTION,
    stage_timeline.PROJECTION,
)


def by_name(name: str) -> Projection:
    """The view called ``name``; ``KeyError`` names the known ones."""
    for projection in ALL:
        if projection.name == name:
            return projection
    raise KeyError(f"no view {name!r}; known: {', '.join(p.name for p in ALL)}")
