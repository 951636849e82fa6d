"""The registry-wide default policy is itself event-sourced."""

from __future__ import annotations

import pytest

from events.errors import ValidationError
from events.policy import DEFAULT_POLICY, GovernancePolicy
from events.registry_policy import REGISTRY_POLICY, RegistryPolicySet, SetRegistryPolicy, decide
from events.stages import Stage
from tests.unit.domain_helpers import cmd

STAGING_DEMOTION = GovernancePolicy(demote_production_to=Stage.STAGING)


def test_before_any_event_the_registry_policy_is_the_built_in_default() -> None:
    assert REGISTRY_POLICY.fold([]).policy == DEFAULT_POLICY


def test_setting_the_registry_policy_is_recorded_and_counted() -> None:
    events = decide(
        cmd(SetRegistryPolicy, policy=STAGING_DEMOTION, comment="keep old prod warm"),
        REGISTRY_POLICY.fold([]),
    )
    assert events == [RegistryPolicySet(policy=STAGING_DEMOTION, comment="keep old prod warm")]
    state = REGISTRY_POLICY.fold(events)
    assert (state.policy, state.revision) == (STAGING_DEMOTION, 1)


def test_setting_the_policy_in_force_again_records_nothing() -> None:
    assert decide(cmd(SetRegistryPolicy, policy=DEFAULT_POLICY), REGISTRY_POLICY.fold([])) == []


def test_an_invalid_registry_policy_is_rejected() -> None:
    with pytest.raises(ValidationError):
        decide(
            cmd(SetRegistryPolicy, policy=GovernancePolicy(request_ttl_seconds=0)),
            REGISTRY_POLICY.fold([]),
        )
