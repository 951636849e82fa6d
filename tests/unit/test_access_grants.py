"""Custom roles, grants and service accounts (events.access_grants): the pure rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from events.access import Permission, Role
from events.access_grants import (
    ACCESS,
    AccessCommand,
    AccessState,
    CreateServiceAccount,
    DefineRole,
    DisableServiceAccount,
    GiveGrant,
    RemoveRole,
    SubjectKind,
    WithdrawGrant,
    check_token_expiry,
    decide_access,
    granted_rights,
    token_rights,
)
from events.errors import ConflictError, NotFoundError, ValidationError

NOW = datetime(2026, 3, 3, 14, 3, tzinfo=UTC)


def run(*commands: AccessCommand) -> AccessState:
    state = ACCESS.initial_state()
    for command in commands:
        state = ACCESS.fold(ACCESS.decide(command, state), state)
    return state


def grant(
    grant_id: str = "g1",
    *,
    subject: str = "alice",
    kind: SubjectKind = SubjectKind.PRINCIPAL,
    role: str = "approver",
    pattern: str = "fraud*",
) -> GiveGrant:
    return GiveGrant(
        actor="admin",
        now=NOW,
        grant_id=grant_id,
        subject_kind=kind,
        subject=subject,
        role=role,
        pattern=pattern,
        reason="rota",
    )


def test_a_grant_adds_its_permissions_on_its_own_pattern_only() -> None:
    # given a contributor token on churn* and a grant of approver on fraud*
    state = run(grant())
    rights = (
        *token_rights(frozenset({Permission.READ, Permission.WRITE}), ("churn*",), "token t1"),
        *granted_rights(state, "alice", ()),
    )
    # then approve holds on fraud models only, and write does not spread to them
    assert decide_access(rights, Permission.APPROVE, "fraud-eu").allowed
    assert decide_access(rights, Permission.APPROVE, "fraud-eu").decided_by == (
        "grant g1 (role approver on fraud*)"
    )
    assert not decide_access(rights, Permission.APPROVE, "churn").allowed
    assert not decide_access(rights, Permission.WRITE, "fraud-eu").allowed
    assert decide_access(rights, Permission.WRITE, "churn").decided_by == "token t1"
    assert not decide_access(rights, Permission.APPROVE, None).allowed


def test_group_grants_apply_to_members_only() -> None:
    state = run(grant(kind=SubjectKind.GROUP, subject="risk", role="reader", pattern="*"))
    assert granted_rights(state, "bob", ("risk",))
    assert granted_rights(state, "bob", ("other",)) == ()
    assert granted_rights(state, "risk", ()) == ()  # a principal named like the group: no


def test_a_withdrawn_grant_gives_nothing_and_an_unknown_one_is_not_found() -> None:
    state = run(grant(), WithdrawGrant(actor="admin", now=NOW, grant_id="g1", reason="done"))
    assert granted_rights(state, "alice", ()) == ()
    with pytest.raises(NotFoundError):
        ACCESS.decide(WithdrawGrant(actor="admin", now=NOW, grant_id="g1"), state)


def test_custom_roles_are_defined_redefined_and_removed_but_builtins_are_fixed() -> None:
    define = DefineRole(
        actor="admin", now=NOW, role="deployer", permissions=(Permission.WRITE, Permission.READ)
    )
    state = run(define, grant(role="deployer", pattern="churn"))
    assert {r.permission for r in granted_rights(state, "alice", ())} == {
        Permission.READ,
        Permission.WRITE,
    }
    # redefining changes what existing grants give; the same definition records nothing
    assert ACCESS.decide(define, state) == []
    state = run(
        define,
        grant(role="deployer", pattern="churn"),
        DefineRole(actor="admin", now=NOW, role="deployer", permissions=(Permission.READ,)),
    )
    assert {r.permission for r in granted_rights(state, "alice", ())} == {Permission.READ}
    # a role in use cannot be removed
    with pytest.raises(ConflictError):
        ACCESS.decide(RemoveRole(actor="admin", now=NOW, role="deployer"), state)
    for builtin in ("admin", "reader"):
        with pytest.raises(ValidationError) as caught:
            ACCESS.decide(
                DefineRole(actor="a", now=NOW, role=builtin, permissions=(Permission.READ,)),
                AccessState(),
            )
        assert (caught.value.field, caught.value.rule) == ("role", "builtin")


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (DefineRole(actor="a", now=NOW, role="Bad Name", permissions=(Permission.READ,)), "role"),
        (DefineRole(actor="a", now=NOW, role="empty", permissions=()), "permissions"),
        (grant(role="nope"), "role"),
        (grant(pattern="fr*aud"), "pattern"),
        (grant(subject="has space"), "principal"),
        (grant(kind=SubjectKind.GROUP, subject="a;b"), "group"),
        (grant(grant_id="a:b"), "grant_id"),
        (CreateServiceAccount(actor="a", now=NOW, name="ci", roles=()), "roles"),
        (
            CreateServiceAccount(
                actor="a", now=NOW, name="ci", roles=(Role.READER,), max_lifetime_seconds=10**9
            ),
            "max_lifetime_seconds",
        ),
        (
            CreateServiceAccount(
                actor="a", now=NOW, name="ci", roles=(Role.READER,), scopes=("a b",)
            ),
            "scopes[0]",
        ),
    ],
)
def test_bad_input_names_the_field(command: AccessCommand, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ACCESS.decide(command, AccessState())
    assert caught.value.field == field


def test_service_account_tokens_must_expire_within_the_accounts_lifetime() -> None:
    state = run(
        CreateServiceAccount(
            actor="admin",
            now=NOW,
            name="ci-bot",
            roles=(Role.CONTRIBUTOR,),
            scopes=("churn*",),
            max_lifetime_seconds=30 * 86400,
        )
    )
    account = state.service_account("ci-bot")
    assert account is not None
    check_token_expiry(account, NOW + timedelta(days=30), NOW)
    for too_late in (None, NOW + timedelta(days=30, seconds=1)):
        with pytest.raises(ValidationError) as caught:
            check_token_expiry(account, too_late, NOW)
        assert caught.value.field == "expires_at"
    state = ACCESS.fold(
        ACCESS.decide(DisableServiceAccount(actor="admin", now=NOW, name="ci-bot"), state), state
    )
    disabled = state.service_account("ci-bot")
    assert disabled is not None and disabled.disabled
    with pytest.raises(ConflictError):
        check_token_expiry(disabled, NOW + timedelta(days=1), NOW)
    # disabling twice records nothing; creating twice conflicts
    assert ACCESS.decide(DisableServiceAccount(actor="a", now=NOW, name="ci-bot"), state) == []
    with pytest.raises(ConflictError):
        ACCESS.decide(
            CreateServiceAccount(actor="a", now=NOW, name="ci-bot", roles=(Role.READER,)), state
        )


def test_registry_wide_actions_need_the_permission_on_star() -> None:
    scoped = token_rights(frozenset({Permission.ADMIN, Permission.READ}), ("churn*",), "t")
    assert not decide_access(scoped, Permission.ADMIN, None).allowed
    assert decide_access(scoped, Permission.READ, None).allowed
    unscoped = token_rights(frozenset({Permission.ADMIN}), (), "t")
    assert decide_access(unscoped, Permission.ADMIN, None).allowed
