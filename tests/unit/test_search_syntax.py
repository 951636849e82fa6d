"""The search filter and order syntax: parsed, or refused with InvalidQueryError (pure)."""

from __future__ import annotations

import pytest

from projections.paging import InvalidQueryError
from projections.search import parse_metric_filter, parse_order, parse_tag_filter


def test_the_filter_syntax_parses_and_refuses_clearly() -> None:
    auc = parse_metric_filter("auc[holdout] >= 0.9")
    assert (auc.key, auc.dataset, auc.op, auc.value) == ("auc", "holdout", ">=", 0.9)
    assert parse_metric_filter("val/loss<1e-3").dataset == ""
    assert parse_metric_filter("auc[*]=1").dataset is None
    assert parse_tag_filter("team=risk=high").value == "risk=high"
    assert parse_tag_filter("pii").value is None
    assert parse_order("-metric:auc[holdout]", versions=True).text() == "-metric:auc[holdout]"
    for bad in ("auc>>1", "auc > x", "auc>inf", "auc[]>1", "auc", ">1", "auc>nan"):
        with pytest.raises(InvalidQueryError):
            parse_metric_filter(bad)
    for text, versions in (("size", True), ("metric:auc", False), ("version", False), ("-", True)):
        with pytest.raises(InvalidQueryError):
            parse_order(text, versions=versions)
    with pytest.raises(InvalidQueryError):
        parse_tag_filter("=x")
