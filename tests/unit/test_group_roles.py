"""MODELREG_OIDC_GROUP_ROLES: parsed strictly, and the first mapped group decides."""

from __future__ import annotations

import pytest

from events.access import Role
from service.identity.mapping import Grant, MappingError, grant_for, parse_group_roles
from service.identity.oidc import looks_like_jwt


def test_entries_give_roles_and_scopes_in_order() -> None:
    grants = parse_group_roles(
        " ml-admins=admin ; ml-team=contributor,approver:churn*|fraud ;everyone=reader;"
    )
    assert grants == (
        Grant(group="ml-admins", roles=(Role.ADMIN,), scopes=()),
        Grant(group="ml-team", roles=(Role.CONTRIBUTOR, Role.APPROVER), scopes=("churn*", "fraud")),
        Grant(group="everyone", roles=(Role.READER,), scopes=()),
    )
    assert grant_for(grants, ["everyone", "ml-team"]) == grants[1]
    assert grant_for(grants, ["interns"]) is None
    assert parse_group_roles("") == ()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("ml-team", "expected group=role"),
        ("ml-team=root", "roles are"),
        ("ml-team=reader:bad scope", "not a model name"),
        ("a=reader; a=admin", "mapped twice"),
        ("=reader", "expected group=role"),
    ],
)
def test_a_malformed_mapping_names_the_entry(text: str, says: str) -> None:
    with pytest.raises(MappingError, match=says):
        parse_group_roles(text)


def test_only_compact_jws_shapes_go_to_the_provider() -> None:
    assert looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln")
    assert not looks_like_jwt("admin-Zm9vYmFy")  # modelreg's own secrets hold no dot
    assert not looks_like_jwt("a.b.c")
