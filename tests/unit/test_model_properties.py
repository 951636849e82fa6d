"""Random command sequences against the model decider; the invariants hold after every step.

After each accepted command:
  1. at most one version is in production (and ``state.production`` names it);
  2. version numbers are 1..n, each new one is the previous maximum + 1, none reused;
  3. a registered version's content and digest never change;
  4. every alias points at an existing, non-archived version (and the reverse index agrees);
  5. every executed promotion satisfied the policy in force at that moment: the transition
     existed, enough distinct eligible approvers, every gate passed on the supplied metrics;
  6. folding the whole history again (also through the codec) gives the same state.
A refused command must leave the state untouched, and ``decide`` never mutates its input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st

from events.catalogue import CODEC
from events.errors import DomainError
from events.model.commands import (
    ApprovePromotion,
    ArchiveModel,
    ArchiveVersion,
    CancelPromotion,
    ClearModelPolicy,
    DeprecateVersion,
    ExpirePromotion,
    RegisterVersion,
    RejectPromotion,
    RemoveAlias,
    RequestPromotion,
    RestoreModel,
    RestoreVersion,
    Rollback,
    SetAlias,
    SetModelPolicy,
    SetVersionTags,
    TransitionStage,
)
from events.model.decider import MODEL, decide
from events.model.events import (
    ModelEvent,
    PromotionApproved,
    PromotionExecuted,
    PromotionRequested,
    VersionRegistered,
)
from events.model.state import ModelState
from events.policy import (
    DEFAULT_POLICY,
    AliasRule,
    GateOp,
    GovernancePolicy,
    MetricGate,
    TransitionRule,
)
from events.stages import Stage
from events.version_content import VersionContent, content_digest
from tests.unit.domain_helpers import NOW, content, registered, version_registered

D, S, P, A = Stage.DEVELOPMENT, Stage.STAGING, Stage.PRODUCTION, Stage.ARCHIVED
ACTORS = ("alice", "bob", "carol", "dave")
ALIASES = ("champion", "challenger", "stable")
STRICT = GovernancePolicy(
    transitions=(
        TransitionRule(from_stage=D, to_stage=S),
        TransitionRule(from_stage=S, to_stage=D),
        TransitionRule(
            from_stage=S,
            to_stage=P,
            approvals=2,
            gates=(
                MetricGate(metric="auc", dataset="holdout", threshold=0.8),
                MetricGate(metric="auc", dataset="holdout", compare_to_production=True),
            ),
        ),
        TransitionRule(from_stage=D, to_stage=A),
        TransitionRule(from_stage=S, to_stage=A),
        TransitionRule(from_stage=P, to_stage=A, approvals=1),
    ),
    protected_aliases=(AliasRule(alias="champion", approvals=1),),
    demote_production_to=S,
    request_ttl_seconds=3600,
    rollback_approvals=1,
)
RELAXED = GovernancePolicy(
    transitions=(
        TransitionRule(from_stage=D, to_stage=S),
        TransitionRule(from_stage=D, to_stage=P, approvals=1),
        TransitionRule(
            from_stage=S,
            to_stage=P,
            approvals=1,
            gates=(MetricGate(metric="auc", dataset="holdout", op=GateOp.GT, threshold=0.6),),
        ),
        TransitionRule(from_stage=P, to_stage=A),
        TransitionRule(from_stage=S, to_stage=A),
    ),
    separation_of_duties=False,
    demote_production_to=D,
)
FOUR_EYES = GovernancePolicy(
    transitions=tuple(
        TransitionRule(
            from_stage=r.from_stage,
            to_stage=r.to_stage,
            approvals=1 if r.to_stage != A else 0,
            gates=(MetricGate(metric="auc", dataset="holdout", threshold=0.7),)
            if r.to_stage == P
            else (),
        )
        for r in DEFAULT_POLICY.transitions
    ),
    protected_aliases=(AliasRule(alias="champion", approvals=2),),
)
POLICIES = (DEFAULT_POLICY, STRICT, RELAXED, FOUR_EYES)

index = st.integers(0, 7)
actor = st.sampled_from(ACTORS)
_ops: list[tuple[int, st.SearchStrategy[tuple[Any, ...]]]] = [  # (weight, strategy)
    (3, st.tuples(st.just("register"), actor)),
    (6, st.tuples(st.just("transition"), index, st.sampled_from([S, S, P, P, D, A]))),
    (1, st.tuples(st.just("archive"), index)),
    (1, st.tuples(st.just("restore"), index, st.booleans())),
    (1, st.tuples(st.just("deprecate"), index)),
    (1, st.tuples(st.just("tag"), index)),
    (3, st.tuples(st.just("alias"), st.sampled_from(ALIASES), index)),
    (1, st.tuples(st.just("unalias"), st.sampled_from(ALIASES))),
    (
        5,
        st.tuples(
            st.just("request"),
            index,
            st.sampled_from([None, S, P, P, A]),
            st.sampled_from([None, None, *ALIASES]),
            actor,
            st.sampled_from([False, False, False, True]),
        ),
    ),
    (8, st.tuples(st.just("approve"), index, actor)),
    (1, st.tuples(st.just("reject"), index, actor)),
    (1, st.tuples(st.just("cancel"), index, actor, st.booleans())),
    (1, st.tuples(st.just("expire"), index)),
    (2, st.tuples(st.just("rollback"), actor)),
    (1, st.tuples(st.just("model_policy"), st.sampled_from([None, 0, 1, 2, 3]))),
    (1, st.tuples(st.just("registry_policy"), st.sampled_from([0, 1, 2, 3]))),
    (
        4,
        st.tuples(
            st.just("metric"), index, st.sampled_from([0.55, 0.82, 0.9, 0.97]) | st.floats(0.5, 1.0)
        ),
    ),
    (1, st.tuples(st.just("tick"), st.sampled_from([60, 1800, 7200]))),
    (1, st.tuples(st.just("archive_model"), st.sampled_from([True, False, False, False, False]))),
]
# one_of ignores repeated strategies, so weights go through sampled_from.
operation = st.sampled_from([strategy for weight, strategy in _ops for _ in range(weight)]).flatmap(
    lambda s: s
)


@dataclass
class World:
    """The test's own record of what the domain may not see: time, metrics, registry policy."""

    state: ModelState
    history: list[ModelEvent]
    now: datetime = NOW
    registry_policy: GovernancePolicy = DEFAULT_POLICY
    metrics: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    contents: dict[int, VersionContent] = field(default_factory=dict)
    requests: int = 0

    def version(self, i: int) -> int:
        return i % self.state.last_version + 1 if self.state.last_version else 1

    def candidate(self, i: int, stage: Stage | None) -> int:
        """For a promotion, usually a version in the stage just below the target."""
        below = {P: S, S: D}.get(stage) if stage is not None else None
        ready = sorted(n for n, v in self.state.versions.items() if v.stage == below)
        return ready[i % len(ready)] if ready and i % 4 else self.version(i)

    def request_id(self, i: int) -> str:
        """Mostly a pending request (closed ones only refuse), sometimes any."""
        pending = sorted(
            r.request_id for r in self.state.requests.values() if r.status == "pending"
        )
        ids = pending if pending and i % 4 else sorted(self.state.requests)
        return ids[i % len(ids)] if ids else "r-none"

    def snapshot(self) -> dict[int, dict[str, dict[str, float]]]:
        return {v: {k: dict(d) for k, d in m.items()} for v, m in self.metrics.items()}


def _command(world: World, op: tuple[Any, ...]) -> Any:
    for build in (_version_command, _request_command, _model_command):
        command = build(world, op)
        if command is not None:
            return command
    raise AssertionError(op)


def _base(world: World, actor: str = "alice") -> dict[str, Any]:
    return {"actor": actor, "now": world.now}


def _governed(world: World, actor: str = "alice") -> dict[str, Any]:
    return {**_base(world, actor), "registry_policy": world.registry_policy}


def _version_command(world: World, op: tuple[Any, ...]) -> Any:
    match op:
        case ("register", who):
            return RegisterVersion(
                **_base(world, who), content=content(world.state.last_version + 1)
            )
        case ("transition", i, stage):
            return TransitionStage(
                **_governed(world),
                version=world.candidate(i, stage),
                to_stage=stage,
                metrics=world.snapshot(),
            )
        case ("archive", i):
            return ArchiveVersion(**_governed(world), version=world.version(i), reason="done")
        case ("restore", i, admin):
            return RestoreVersion(
                **_base(world), version=world.version(i), reason="needed", actor_is_admin=admin
            )
        case ("deprecate", i):
            return DeprecateVersion(**_base(world), version=world.version(i), reason="bad")
        case ("tag", i):
            return SetVersionTags(
                **_base(world), version=world.version(i), tags={"seen": str(len(world.history))}
            )
        case ("alias", name, i):
            return SetAlias(**_governed(world), alias=name, version=world.version(i))
        case ("unalias", name):
            return RemoveAlias(**_governed(world), alias=name)
    return None


def _request_command(world: World, op: tuple[Any, ...]) -> Any:
    match op:
        case ("request", i, stage, alias, who, rollback):
            world.requests += 1
            return RequestPromotion(
                **_governed(world, who),
                request_id=f"r{world.requests}",
                version=world.candidate(i, stage),
                target_stage=stage,
                alias=alias,
                rollback=rollback,
                justification="why not",
                metrics=world.snapshot(),
            )
        case ("approve", i, who):
            return ApprovePromotion(
                **_governed(world, who), request_id=world.request_id(i), metrics=world.snapshot()
            )
        case ("reject", i, who):
            return RejectPromotion(
                **_base(world, who), request_id=world.request_id(i), comment="no"
            )
        case ("cancel", i, who, admin):
            return CancelPromotion(
                **_base(world, who), request_id=world.request_id(i), actor_is_admin=admin
            )
        case ("expire", i):
            return ExpirePromotion(**_base(world), request_id=world.request_id(i))
    return None


def _model_command(world: World, op: tuple[Any, ...]) -> Any:
    match op:
        case ("rollback", who):
            return Rollback(**_governed(world, who), reason="incident")
        case ("model_policy", None):
            return ClearModelPolicy(**_base(world))
        case ("model_policy", p):
            return SetModelPolicy(**_base(world), policy=POLICIES[p])
        case ("archive_model", True):
            return ArchiveModel(**_base(world), reason="pause")
        case ("archive_model", False):
            return RestoreModel(**_base(world), reason="resume")
    return None


def _check_executed(
    world: World, before: ModelState, events: list[ModelEvent], command: Any
) -> None:
    """Invariant 5, re-derived from the policy by hand rather than by the code under test."""
    policy = before.policy if before.policy is not None else world.registry_policy
    requested = {e.request_id: e for e in events if isinstance(e, PromotionRequested)}
    new_approvals = [e.approved_by for e in events if isinstance(e, PromotionApproved)]
    for executed in (e for e in events if isinstance(e, PromotionExecuted)):
        if executed.request_id in requested:
            ask = requested[executed.request_id]
            requester, rollback, approvals = ask.requested_by, ask.rollback, list(new_approvals)
        else:
            request = before.requests[executed.request_id]
            assert world.now < request.expires_at
            requester, rollback, approvals = (
                request.requested_by,
                request.rollback,
                [*request.approvals, *new_approvals],
            )
        version = before.versions[executed.version]
        assert executed.from_stage == version.stage
        required, gates = 0, []
        if rollback:
            required = policy.rollback_requirement()
            assert executed.version == before.rollback_target()
        else:
            assert version.stage != A
            assert executed.target_stage == A or not version.deprecated
            if executed.target_stage is not None:
                rules = [
                    r
                    for r in policy.transitions
                    if (r.from_stage, r.to_stage) == (version.stage, executed.target_stage)
                ]
                assert len(rules) == 1, "executed a transition the policy does not have"
                required, gates = rules[0].approvals, list(rules[0].gates)
                if version.stage == P:  # leaving production is a production change
                    required = max(required, policy.production_approvals())
            protected = [r for r in policy.protected_aliases if r.alias == executed.alias]
            for rule in protected:
                required, gates = max(required, rule.approvals), gates + list(rule.gates)
        excluded = {requester, version.registered_by} if policy.separation_of_duties else set()
        eligible = {a for a in approvals if a not in excluded}
        assert set(executed.approved_by) <= eligible
        assert len(set(executed.approved_by)) == len(executed.approved_by) >= required
        snapshot = command.metrics
        for gate in gates if not rollback else []:
            value = snapshot.get(version.number, {}).get(gate.metric, {}).get(gate.dataset)
            assert value is not None
            ops = {
                GateOp.GE: value.__ge__,
                GateOp.GT: value.__gt__,
                GateOp.LE: value.__le__,
                GateOp.LT: value.__lt__,
            }
            if gate.threshold is not None:
                assert ops[gate.op](gate.threshold)
            prod = before.production
            if gate.compare_to_production and prod is not None and prod != version.number:
                baseline = snapshot.get(prod, {}).get(gate.metric, {}).get(gate.dataset)
                assert baseline is None or ops[gate.op](baseline)
        assert all(result.passed for result in executed.gate_results)


def _check_invariants(world: World, before: ModelState, events: list[ModelEvent]) -> None:
    state = world.state
    in_production = [n for n, v in state.versions.items() if v.stage == P]
    assert len(in_production) <= 1
    assert state.production == (in_production[0] if in_production else None)

    assert sorted(state.versions) == list(range(1, state.last_version + 1))
    expected = before.last_version
    for event in events:
        if isinstance(event, VersionRegistered):
            expected += 1
            assert event.version == expected
            world.contents[event.version] = event.content
    for number, version in state.versions.items():
        assert version.content == world.contents[number]
        assert version.content_digest == content_digest(world.contents[number])

    for alias, number in state.aliases.items():
        assert number in state.versions
        assert state.versions[number].stage != A
        assert alias in state.versions[number].aliases
    assert sum(len(v.aliases) for v in state.versions.values()) == len(state.aliases)


def _step(world: World, op: tuple[Any, ...]) -> None:
    match op:
        case ("registry_policy", p):
            world.registry_policy = POLICIES[p]
            return
        case ("metric", i, value):
            world.metrics.setdefault(world.version(i), {})["auc"] = {"holdout": value}
            return
        case ("tick", seconds):
            world.now += timedelta(seconds=seconds)
            return
    command = _command(world, op)
    before = world.state
    frozen = msgspec.json.encode(before)
    try:
        events = decide(command, before)
    except DomainError:
        assert msgspec.json.encode(world.state) == frozen
        return
    assert msgspec.json.encode(before) == frozen, "decide mutated its state"
    _check_executed(world, before, events, command)
    for event in events:
        world.state = MODEL.evolve(world.state, event)
    world.history.extend(events)
    for accepted in events:
        note_event(
            accepted.event_type
        )  # shown by --hypothesis-show-statistics: what the runs reached
    _check_invariants(world, before, events)
    assert MODEL.fold(world.history) == world.state


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(POLICIES), st.lists(operation, min_size=25, max_size=70))
def test_invariants_hold_after_every_step_of_a_random_command_sequence(
    registry_policy: GovernancePolicy, ops: list[tuple[Any, ...]]
) -> None:
    start: list[ModelEvent] = [
        registered(),
        version_registered(1, by="alice"),
        version_registered(2, by="bob"),
    ]
    world = World(
        state=MODEL.fold(start),
        history=list(start),
        registry_policy=registry_policy,
        contents={1: content(1), 2: content(2)},
    )
    for op in ops:
        _step(world, op)
    through_codec = [
        CODEC.decode_data(e.event_type, e.schema_version, CODEC.encode(e)) for e in world.history
    ]
    assert MODEL.fold(through_codec) == world.state  # type: ignore[arg-type]
    assert msgspec.json.decode(msgspec.json.encode(world.state), type=ModelState) == world.state
