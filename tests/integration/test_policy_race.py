"""A registry policy change racing an approval: no decision lands under a replaced policy.

Issue 13 item 10: in 4 of 20 trials an approval executed under the old policy, because
the registry policy stream is outside the model stream's concurrency check. Two replicas
(each its own store, executor and caches) race on one database; the invariant is checked
on the sealed log, whichever order each trial took. The interleaving the bug needs is
also forced, deterministically, by changing the policy between an approval's read of the
policy and its append.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from msgspec.structs import replace

from eventlog.log import read_log
from eventlog.sealer import Sealer
from eventlog.store import EventStore
from events.catalogue import CODEC
from events.model.commands import ApprovePromotion, Metrics, RegisterModel, RegisterVersion
from events.model.events import PromotionApproved, PromotionExecuted
from events.model.state import ModelState
from events.policy import GovernancePolicy
from events.registry_policy import RegistryPolicySet
from events.stages import Stage
from service.commands.executor import CommandExecutor
from service.commands.registry import Registry, Written
from tests.support.database import Database
from tests.support.policies import PERMISSIVE_TRANSITIONS, permissive
from tests.unit.domain_helpers import content

TRIALS = 20


def production_needs(approvals: int) -> GovernancePolicy:
    return permissive(
        transitions=tuple(
            replace(r, approvals=approvals) if r.to_stage == Stage.PRODUCTION else r
            for r in PERMISSIVE_TRANSITIONS
        )
    )


ONE, TWO = production_needs(1), production_needs(2)


class PolicyChangesAfterItsRead(Registry):
    """Runs ``change`` right after the registry policy is next taken for a decision (read,
    or as this replica last saw it): the race, forced."""

    change: Callable[[], Awaitable[Any]] | None = None

    async def policy_for_decision(self, *, fresh: bool) -> tuple[int, GovernancePolicy, bool]:
        taken = await super().policy_for_decision(fresh=fresh)
        if self.change is not None:
            change, self.change = self.change, None
            await change()
        return taken


def replica(db: Database, cls: type[Registry] = Registry) -> Registry:
    """One API process's command side: its own store, executor and caches."""
    store = EventStore(db.pool, CODEC)
    return cls(store, CommandExecutor(store), seal_timeout=0)


async def pending_request(registry: Registry, name: str) -> str:
    """Model ``name`` with v1 in staging and a request (by alice) to move it to production."""
    written = await registry.register_model(
        lambda model_id: RegisterModel(
            actor="alice", now=registry.now(), model_id=model_id, name=name, owner="risk"
        )
    )
    await registry.execute(
        written.model_id, RegisterVersion(actor="alice", now=registry.now(), content=content(1))
    )
    await registry.transition(name, 1, Stage.STAGING, actor="alice", comment="")
    _, request_id = await registry.transition(
        name, 1, Stage.PRODUCTION, actor="alice", comment="ship it"
    )
    assert request_id is not None
    return request_id


async def approve(registry: Registry, name: str, request_id: str, actor: str) -> Written:
    def build(
        _model_id: str, _state: ModelState, policy: GovernancePolicy, metrics: Metrics
    ) -> ApprovePromotion:
        return ApprovePromotion(
            actor=actor,
            now=registry.now(),
            registry_policy=policy,
            request_id=request_id,
            metrics=metrics,
        )

    return await registry.governed(name, build, metric_versions=lambda s: [1, s.production])


async def sealed_log(db: Database) -> list[Any]:
    await Sealer(db.connect, db.schema).seal_all(await db.connect())
    return [CODEC.decode(e.envelope) for e in await read_log(db.pool, 0, 100_000)]


def executions_under_a_replaced_policy(log: list[Any]) -> list[str]:
    """Every executed promotion whose approvals fall short of the policy in force at its
    place in the log (the registry policy of the latest ``registry.policy_set`` before it)."""
    in_force: GovernancePolicy | None = None
    wrong = []
    for event in log:
        if isinstance(event, RegistryPolicySet):
            in_force = event.policy
        elif isinstance(event, PromotionExecuted):
            assert in_force is not None
            needed = in_force.production_approvals()
            if event.approvals_required != needed or len(event.approved_by) < needed:
                wrong.append(f"{event.request_id}: {event.approved_by} under {needed} needed")
    return wrong


@pytest.fixture
async def deciders(db: Database) -> tuple[Registry, Registry]:
    approver_side, policy_side = replica(db), replica(db)
    await policy_side.set_registry_policy(ONE, actor="admin", comment="one approval")
    return approver_side, policy_side


async def test_an_approval_whose_policy_changed_before_its_append_is_decided_again(
    db: Database, deciders: tuple[Registry, Registry]
) -> None:
    # given a request that one approval would execute under the policy in force
    _, policy_side = deciders
    approver_side = replica(db, PolicyChangesAfterItsRead)
    assert isinstance(approver_side, PolicyChangesAfterItsRead)
    request_id = await pending_request(approver_side, "churn")
    # when another replica makes production need two approvals after the approval read
    # the policy but before it appended
    approver_side.change = lambda: policy_side.set_registry_policy(
        TWO, actor="admin", comment="two approvals"
    )
    written = await approve(approver_side, "churn", request_id, "bob")
    # then the approval was decided again under the new policy: recorded, not executed
    assert [type(e) for e in written.events] == [PromotionApproved]
    assert written.state.requests[request_id].status == "pending"
    log = await sealed_log(db)
    assert [type(e).__name__ for e in log[-2:]] == ["RegistryPolicySet", "PromotionApproved"]
    assert executions_under_a_replaced_policy(log) == []


async def test_an_approval_decided_on_a_policy_another_replica_replaced_is_decided_again(
    db: Database, deciders: tuple[Registry, Registry]
) -> None:
    # given a request one approval would execute, on a replica that has seen that policy
    approver_side, policy_side = deciders
    request_id = await pending_request(approver_side, "churn")
    # when another replica makes production need two approvals, unknown to the first
    await policy_side.set_registry_policy(TWO, actor="admin", comment="two approvals")
    written = await approve(approver_side, "churn", request_id, "bob")
    # then the approval, first decided on the policy the replica had seen, did not land
    # under it: it was decided again under the new one, recorded and not executed
    assert [type(e) for e in written.events] == [PromotionApproved]
    assert written.state.requests[request_id].status == "pending"
    assert executions_under_a_replaced_policy(await sealed_log(db)) == []


async def test_a_refusal_under_a_policy_another_replica_replaced_is_not_the_answer(
    db: Database, deciders: tuple[Registry, Registry]
) -> None:
    # given v1 in staging, on a replica that has seen production need one approval (so a
    # move there opens a request, which needs a comment)
    approver_side, policy_side = deciders
    written = await approver_side.register_model(
        lambda model_id: RegisterModel(
            actor="alice", now=approver_side.now(), model_id=model_id, name="churn", owner="risk"
        )
    )
    await approver_side.execute(
        written.model_id,
        RegisterVersion(actor="alice", now=approver_side.now(), content=content(1)),
    )
    await approver_side.transition("churn", 1, Stage.STAGING, actor="alice", comment="")
    # when another replica lets production take versions without approval
    await policy_side.set_registry_policy(permissive(), actor="admin", comment="no approvals")
    moved, request_id = await approver_side.transition(
        "churn", 1, Stage.PRODUCTION, actor="alice", comment=""
    )
    # then the refusal the old policy gives (no comment) is not the answer: the move is
    # decided under the policy in force and done at once
    assert request_id is None
    assert moved.state.versions[1].stage == Stage.PRODUCTION


async def test_racing_approvals_and_policy_changes_never_execute_under_a_replaced_policy(
    db: Database, deciders: tuple[Registry, Registry]
) -> None:
    approver_side, policy_side = deciders
    executed = 0
    for trial in range(TRIALS):
        # given a request one approval executes, while production needs one approval
        await policy_side.set_registry_policy(ONE, actor="admin", comment="one approval")
        name = f"model-{trial}"
        request_id = await pending_request(approver_side, name)
        # when bob approves while the other replica makes production need two
        approval, _ = await asyncio.gather(
            approve(approver_side, name, request_id, "bob"),
            policy_side.set_registry_policy(TWO, actor="admin", comment="two approvals"),
        )
        executed += any(isinstance(e, PromotionExecuted) for e in approval.events)
    # then, whichever came first in each trial, the log shows no execution that the policy
    # in force at its place did not allow
    log = await sealed_log(db)
    assert executions_under_a_replaced_policy(log) == []
    assert sum(isinstance(e, PromotionExecuted) for e in log) == executed
