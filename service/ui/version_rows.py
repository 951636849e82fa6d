"""The model page's table of versions, each row drawn once per content.

A model's page is read far more often than its versions change, and drawing 100 rows (every
value escaped by the template engine) was about half of the page's time. A row's HTML
depends only on what it shows, so that tuple is the key: a version whose stage, aliases,
metrics or deprecation change has a new key, and a stale row cannot be shown. Bounded, least
recently used first out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup

from projections.views.model_versions import VersionRow

ROW_TEMPLATE = "_version_row.html"
MAX_ROWS = 8192

_rows: OrderedDict[tuple[Any, ...], Markup] = OrderedDict()


def version_rows(
    environment: Any,
    versions: Sequence[VersionRow],
    metric_keys: Sequence[tuple[str, str]],
    base: str,
) -> list[Markup]:
    """The ``<tr>`` of each version, newest drawn only when its content is new."""
    template = None
    drawn: list[Markup] = []
    for v in versions:
        values = tuple(
            tuple(m.value for m in v.metrics if m.key == key and m.dataset == dataset)
            for key, dataset in metric_keys
        )
        key = (
            base,
            v.version,
            v.deprecated,
            v.stage,
            v.environments,
            v.aliases,
            values,
            v.registered_by,
            v.created_at,
        )
        row = _rows.get(key)
        if row is None:
            template = template or environment.get_template(ROW_TEMPLATE)
            # Safe: drawn by the autoescaping engine, every value escaped there.
            row = Markup(  # noqa: S704
                template.render(
                    base=base,
                    version=v.version,
                    deprecated=v.deprecated,
                    stage=v.stage,
                    environments=v.environments,
                    aliases=v.aliases,
                    values=values,
                    registered_by=v.registered_by,
                    created_at=v.created_at,
                )
            )
            _rows[key] = row
            if len(_rows) > MAX_ROWS:
                _rows.popitem(last=False)
        else:
            _rows.move_to_end(key)
        drawn.append(row)
    return drawn
