"""Access tokens: issue, revoke, expiry, scopes and what each role may do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from events.access import (
    TOKENS,
    IssueToken,
    Permission,
    RevokeToken,
    Role,
    TokenIssued,
    TokenRevoked,
)
from events.catalogue import CODEC
from events.errors import ConflictError, NotFoundError, ValidationError

GOLDEN = Path(__file__).parent / "golden"

NOW = datetime(2026, 3, 3, 14, 3, tzinfo=UTC)


def issue(**overrides: object) -> IssueToken:
    fields: dict[str, object] = {
        "actor": "root",
        "now": NOW,
        "token_id": "t1",
        "principal": "alice@example.com",
        "roles": (Role.CONTRIBUTOR,),
    }
    fields.update(overrides)
    return IssueToken(**fields)  # type: ignore[arg-type]


def test_an_issued_token_records_neither_its_secret_nor_a_digest_of_it() -> None:
    [event] = TOKENS.decide(issue(), TOKENS.initial_state())
    assert isinstance(event, TokenIssued)
    assert set(msgspec.structs.asdict(event)) == {
        "token_id",
        "principal",
        "roles",
        "scopes",
        "expires_at",
        "description",
    }
    state = TOKENS.fold([event])
    assert state.active_at(NOW)
    assert state.permissions == {Permission.READ, Permission.WRITE}


def test_a_token_cannot_be_issued_twice() -> None:
    state = TOKENS.fold(TOKENS.decide(issue(), TOKENS.initial_state()))
    with pytest.raises(ConflictError):
        TOKENS.decide(issue(), state)


@pytest.mark.parametrize(
    ("overrides", "field", "rule"),
    [
        ({"principal": "bad name"}, "principal", "pattern"),
        ({"roles": ()}, "roles", "required"),
        ({"scopes": ("churn", "fraud/*")}, "scopes[1]", "pattern"),
        ({"expires_at": NOW - timedelta(seconds=1)}, "expires_at", "range"),
        ({"token_id": "has space"}, "token_id", "pattern"),
    ],
)
def test_bad_token_requests_name_the_field_and_rule(
    overrides: dict[str, object], field: str, rule: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        TOKENS.decide(issue(**overrides), TOKENS.initial_state())
    assert (caught.value.field, caught.value.rule) == (field, rule)


def test_a_revoked_token_is_inactive_and_revoking_again_changes_nothing() -> None:
    state = TOKENS.fold(TOKENS.decide(issue(), TOKENS.initial_state()))
    [revoked] = TOKENS.decide(RevokeToken(actor="root", now=NOW, reason="left"), state)
    assert revoked == TokenRevoked(token_id="t1", reason="left")
    state = TOKENS.evolve(state, revoked)
    assert not state.active_at(NOW)
    assert TOKENS.decide(RevokeToken(actor="root", now=NOW), state) == []
    with pytest.raises(NotFoundError):
        TOKENS.decide(RevokeToken(actor="root", now=NOW), TOKENS.initial_state())


def test_an_expired_token_is_inactive_from_its_expiry_on() -> None:
    expiry = NOW + timedelta(hours=1)
    state = TOKENS.fold(TOKENS.decide(issue(expires_at=expiry), TOKENS.initial_state()))
    assert state.active_at(expiry - timedelta(microseconds=1))
    assert not state.active_at(expiry)


def test_scopes_narrow_a_token_to_names_and_prefixes() -> None:
    state = TOKENS.fold(TOKENS.decide(issue(scopes=("churn", "fraud-*")), TOKENS.initial_state()))
    assert state.covers("churn")
    assert state.covers("fraud-eu")
    assert not state.covers("churn2")
    assert not state.covers(None)  # registry-wide things need an unscoped token
    unscoped = TOKENS.fold(TOKENS.decide(issue(token_id="t2"), TOKENS.initial_state()))
    assert unscoped.covers("anything")
    assert unscoped.covers(None)


def test_roles_grant_their_permissions_and_admin_grants_all() -> None:
    def perms(*roles: Role) -> frozenset[Permission]:
        return TOKENS.fold(TOKENS.decide(issue(roles=roles), TOKENS.initial_state())).permissions

    assert perms(Role.READER) == {Permission.READ}
    assert perms(Role.APPROVER) == {Permission.READ, Permission.APPROVE}
    assert perms(Role.CONTRIBUTOR, Role.APPROVER) == {
        Permission.READ,
        Permission.WRITE,
        Permission.APPROVE,
    }
    assert perms(Role.ADMIN) == set(Permission)


def test_a_v1_token_issued_event_reads_without_its_unkeyed_secret_digest() -> None:
    # given a token.issued event as 0.2 recorded it, with the SHA-256 of the secret
    v1 = (GOLDEN / "token.issued.v1.json").read_bytes().rstrip(b"\n")
    assert b"secret_sha256" in v1
    # when it is read by this code
    event = CODEC.decode_data("token.issued", 1, v1)
    # then it is the current shape: the token's facts, no digest for any fold to see
    assert isinstance(event, TokenIssued)
    assert (event.token_id, event.principal, event.scopes) == ("t-1", "ci@acme.io", ("churn*",))
    assert "secret_sha256" not in msgspec.json.encode(event).decode()
