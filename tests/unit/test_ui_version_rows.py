"""The model page's version rows are drawn once per content: what a row shows must always
be the version as it is now, escaped."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader

import service.ui.version_rows
from projections.views.model_versions import MetricValue, VersionRow
from service.ui.version_rows import version_rows

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(service.ui.version_rows.__file__).parent / "templates"),
    autoescape=True,
)
WHEN = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
BASE = "/ui/models/churn"


def _version(**changes: object) -> VersionRow:
    fields: dict[str, object] = {
        "model_id": "m-1",
        "model_name": "churn",
        "version": 7,
        "stage": "staging",
        "stage_since": WHEN,
        "aliases": ("candidate",),
        "description": "",
        "tags": {},
        "content": None,
        "content_digest": "sha256:" + "0" * 64,
        "registered_by": "alice",
        "deprecated": False,
        "deprecation_reason": "",
        "deprecated_at": None,
        "owner": "alice",
        "model_archived": False,
        "created_at": WHEN,
        "updated_at": WHEN,
        "position": 10,
        "metrics": (MetricValue(key="auc", dataset="holdout", value=0.91, step=0, timestamp=WHEN),),
    }
    return VersionRow(**(fields | changes))  # type: ignore[arg-type]


def test_a_row_drawn_before_shows_the_versions_new_stage_aliases_and_metrics() -> None:
    # given: v7 drawn while in staging, alias candidate, auc 0.91
    keys = [("auc", "holdout")]
    [before] = version_rows(TEMPLATES, [_version()], keys, BASE)
    assert "staging" in before and "candidate" in before and "0.91" in before

    # when: v7 moves to production, gains champion and a new auc
    later = _version(
        stage="production",
        aliases=("champion",),
        metrics=(MetricValue(key="auc", dataset="holdout", value=0.93, step=1, timestamp=WHEN),),
    )
    [after] = version_rows(TEMPLATES, [later], keys, BASE)

    # then: the row shows the new content, none of the old
    assert "production" in after and "champion" in after and "0.93" in after
    assert "staging" not in after and "candidate" not in after and "0.91" not in after


def test_rows_of_two_models_with_the_same_version_are_not_shared() -> None:
    [churn] = version_rows(TEMPLATES, [_version()], [], "/ui/models/churn")
    [fraud] = version_rows(TEMPLATES, [_version()], [], "/ui/models/fraud")
    assert 'href="/ui/models/churn/versions/7"' in churn
    assert 'href="/ui/models/fraud/versions/7"' in fraud


def test_every_value_in_a_row_is_escaped() -> None:
    [row] = version_rows(TEMPLATES, [_version(registered_by="<b>mallory</b>")], [], BASE)
    assert "&lt;b&gt;mallory&lt;/b&gt;" in row
    assert "<b>" not in row


def test_a_metric_column_the_version_lacks_shows_a_dash() -> None:
    [row] = version_rows(TEMPLATES, [_version(metrics=())], [("auc", "holdout")], BASE)
    assert '<td class="num">—</td>' in row


def test_a_version_entering_a_second_environment_is_redrawn_with_both() -> None:
    [before] = version_rows(
        TEMPLATES, [_version(stage="production", environments=("eu",))], [], BASE
    )
    [after] = version_rows(
        TEMPLATES, [_version(stage="production", environments=("eu", "us"))], [], BASE
    )
    assert "in eu<" in before
    assert "in eu, us<" in after
