"""Would a stage move pass? The decider run on the model as it stands, nothing written. I/O:
reads only.

For CI/CD pipelines (``modelreg gate check``): the same command the move would execute
(a direct transition, or the promotion request a policy that needs approvals opens) is
decided under the registry policy in force with the current metrics, so the answer is the
one the move itself would get now: the transition rules, separation of duties that applies
at request time, and the metric gates. Approvals are not given by a check: a move that
needs them passes as ``needs_approval``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from events.errors import DomainError, NotFoundError
from events.model.commands import RequestPromotion, TransitionStage
from events.model.decider import MODEL
from events.policy import (
    GateResult,
    evaluate_gates,
    require_environment,
    require_stage,
    requirement,
)
from service.commands.registry import Registry


class GateCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The answer: ``passes`` with the outcome, or the refusal's code, reason and details."""

    model: str
    version: int
    from_stage: str
    to_stage: str
    passes: bool
    outcome: Literal["direct", "needs_approval", "refused"]
    approvals_required: int = 0
    would_record: list[str] = msgspec.field(default_factory=list)
    code: str | None = None
    reason: str | None = None
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    # Each metric gate of the move with the values it was judged on (the version's and,
    # for a gate against production, production's): why it passes or which one fails.
    gates: list[GateResult] = msgspec.field(default_factory=list)


async def check_transition(
    registry: Registry,
    name: str,
    version: int,
    to_stage: str,
    *,
    actor: str,
    environment: str | None = None,
) -> GateCheck:
    """Decide the move without appending; a missing model or version raises (404)."""
    model_id, _, state = await registry.model(name)
    current = state.version(version)  # NotFoundError names the version
    champion = state.champion(environment)
    metrics = await registry.metric_snapshot(model_id, [version, champion])
    registry_policy = await registry.registry_policy()
    # A stage the policy does not define is a bad question (422), not a refused move.
    require_stage(state.effective_policy(registry_policy), to_stage, "to")
    require_environment(
        state.effective_policy(registry_policy), to_stage, environment, "environment"
    )
    now = registry.now()
    approvals = 0
    gates: list[GateResult] = []
    try:
        needed = requirement(state.effective_policy(registry_policy), current.stage, to_stage, None)
        approvals = needed.approvals
        gates = list(evaluate_gates(needed.gates, version, champion, metrics))
        command: TransitionStage | RequestPromotion
        if approvals == 0:
            command = TransitionStage(
                actor=actor,
                now=now,
                registry_policy=registry_policy,
                version=version,
                to_stage=to_stage,
                comment="gate check",
                metrics=metrics,
                environment=environment,
            )
        else:
            command = RequestPromotion(
                actor=actor,
                now=now,
                registry_policy=registry_policy,
                request_id="gate-check",
                version=version,
                justification="gate check",
                target_stage=to_stage,
                metrics=metrics,
                environment=environment,
            )
        events = MODEL.decide(command, state)
    except NotFoundError:
        raise
    except DomainError as exc:
        return GateCheck(
            model=name,
            version=version,
            from_stage=str(current.stage),
            to_stage=str(to_stage),
            passes=False,
            outcome="refused",
            approvals_required=approvals,
            code=exc.code,
            reason=str(exc),
            details=dict(exc.details),
            gates=gates,
        )
    return GateCheck(
        model=name,
        version=version,
        from_stage=str(current.stage),
        to_stage=str(to_stage),
        passes=True,
        outcome="direct" if approvals == 0 else "needs_approval",
        approvals_required=approvals,
        would_record=[e.event_type for e in events],
        gates=gates,
    )
