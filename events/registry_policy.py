"""The ``policy:registry`` stream: the registry-wide default governance policy. Pure.

Models without a policy of their own follow this one. Changing it is an event, so its
history is auditable and a past decision can be explained by the policy in force then.
Before the first ``registry.policy_set`` the default is ``events.policy.DEFAULT_POLICY``.
The shell passes ``state.policy`` as ``registry_policy`` on governed model commands.
"""

from __future__ import annotations

from typing import ClassVar, assert_never

import msgspec
from msgspec.structs import replace

from events.base import Command, Decider, Event
from events.names import validate_actor, validate_comment
from events.policy import DEFAULT_POLICY, GovernancePolicy, validate_policy
from events.streams import POLICY_TYPE

STREAM_TYPE = POLICY_TYPE


class RegistryPolicySet(Event, frozen=True, kw_only=True):
    event_type: ClassVar[str] = "registry.policy_set"
    policy: GovernancePolicy
    comment: str


class SetRegistryPolicy(Command, frozen=True, kw_only=True):
    policy: GovernancePolicy
    comment: str = ""


class RegistryPolicyState(msgspec.Struct, frozen=True, kw_only=True):
    policy: GovernancePolicy = DEFAULT_POLICY
    revision: int = 0


RegistryPolicyEvent = RegistryPolicySet
REGISTRY_POLICY_EVENT_TYPES: tuple[type[Event], ...] = (RegistryPolicySet,)


def initial_state() -> RegistryPolicyState:
    return RegistryPolicyState()


def evolve(state: RegistryPolicyState, event: RegistryPolicyEvent) -> RegistryPolicyState:
    match event:
        case RegistryPolicySet():
            return replace(state, policy=event.policy, revision=state.revision + 1)
        case _:
            assert_never(event)


def decide(command: SetRegistryPolicy, state: RegistryPolicyState) -> list[RegistryPolicyEvent]:
    """Setting the policy in force again decides nothing."""
    validate_actor(command.actor)
    validate_policy(command.policy)
    validate_comment(command.comment)
    if command.policy == state.policy:
        return []
    return [RegistryPolicySet(policy=command.policy, comment=command.comment)]


REGISTRY_POLICY: Decider[RegistryPolicyState, SetRegistryPolicy, RegistryPolicyEvent] = Decider(
    stream_type=STREAM_TYPE,
    initial_state=initial_state,
    evolve=evolve,
    decide=decide,
    state_type=RegistryPolicyState,
)
