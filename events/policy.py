"""Governance policies and their pure evaluation: transitions, approvals, metric gates. Pure.

A policy says which stage transitions exist and what each one needs (a number of
approvals, metric gates), which aliases are protected, whether separation of duties
applies, where a demoted production version goes, how long requests live, and whether a
rollback needs approval. Each model may set its own policy (``model.policy_set``);
otherwise the registry-wide default from the ``policy:registry`` stream applies, and
before anyone sets that, ``DEFAULT_POLICY``.

Production is governed the same way on every route. ``DEFAULT_POLICY`` needs one approval
to enter production and one to leave it, so a contributor alone changes neither. Whatever
a policy says about ``production -> X``, leaving production needs at least what entering
it needs (archiving the production version is a production change too), and a rollback
needs what a promotion to production needs unless ``rollback_approvals`` says otherwise.

Metric gates read a ``MetricSnapshot`` the shell builds from the metrics streams
(``events.metrics.latest_values``) and passes in on the command, so evaluation stays pure:

    MetricSnapshot = {version: {metric_key: {dataset_name or "": latest value}}}
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Mapping

import msgspec

from events.errors import InvalidTransitionError, PolicyViolationError, ValidationError
from events.names import (
    validate_alias,
    validate_dataset_name,
    validate_finite,
    validate_key,
    validate_place,
    validate_stage_name,
)
from events.stages import DEFAULT_STAGES, INITIAL_STAGE, Stage, StageDefinition, StageName

MAX_APPROVALS = 10
MAX_GATES = 20
MAX_PROTECTED_ALIASES = 100
MAX_STAGES = 20
MAX_ENVIRONMENTS = 20
MIN_REQUEST_TTL_SECONDS = 60
MAX_REQUEST_TTL_SECONDS = 365 * 24 * 3600
DEFAULT_REQUEST_TTL_SECONDS = 7 * 24 * 3600

MetricSnapshot = Mapping[int, Mapping[str, Mapping[str, float]]]


class GateOp(enum.StrEnum):
    GE = ">="
    GT = ">"
    LE = "<="
    LT = "<"


_COMPARE: dict[GateOp, Callable[[float, float], bool]] = {
    GateOp.GE: operator.ge,
    GateOp.GT: operator.gt,
    GateOp.LE: operator.le,
    GateOp.LT: operator.lt,
}


class MetricGate(msgspec.Struct, frozen=True, kw_only=True):
    """``metric op threshold`` and/or ``metric op <current production value>``, on one dataset.

    ``dataset == ""`` matches metrics logged without a dataset. A missing candidate value
    fails the gate; a missing production value (or no production version) passes the
    comparison part, since there is nothing to be worse than.
    """

    metric: str
    op: GateOp = GateOp.GE
    dataset: str = ""
    threshold: float | None = None
    compare_to_production: bool = False

    def describe(self) -> str:
        bounds = [str(self.threshold)] if self.threshold is not None else []
        if self.compare_to_production:
            bounds.append("production")
        where = f" on {self.dataset}" if self.dataset else ""
        return f"{self.metric} {self.op} {' and '.join(bounds)}{where}"


class TransitionRule(msgspec.Struct, frozen=True, kw_only=True):
    from_stage: StageName
    to_stage: StageName
    approvals: int = 0
    gates: tuple[MetricGate, ...] = ()


class AliasRule(msgspec.Struct, frozen=True, kw_only=True):
    """A protected alias: it moves only through a promotion request with approvals."""

    alias: str
    approvals: int = 1
    gates: tuple[MetricGate, ...] = ()


def _rule(source: StageName, target: StageName, approvals: int = 0) -> TransitionRule:
    return TransitionRule(from_stage=source, to_stage=target, approvals=approvals)


# Production changes need an approver by default: a registry that nobody configured must
# not let one contributor swap or remove what serves traffic.
DEFAULT_TRANSITIONS: tuple[TransitionRule, ...] = (
    _rule(Stage.DEVELOPMENT, Stage.STAGING),
    _rule(Stage.STAGING, Stage.DEVELOPMENT),
    _rule(Stage.STAGING, Stage.PRODUCTION, approvals=1),
    _rule(Stage.DEVELOPMENT, Stage.ARCHIVED),
    _rule(Stage.STAGING, Stage.ARCHIVED),
    _rule(Stage.PRODUCTION, Stage.ARCHIVED, approvals=1),
)


class GovernancePolicy(msgspec.Struct, frozen=True, kw_only=True):
    """``stages`` and ``initial_stage`` unset mean the four default stages (and are then
    left out of the encoded policy, so policies recorded before custom stages keep their
    bytes); ``initial_stage`` unset means the first stage listed."""

    transitions: tuple[TransitionRule, ...] = DEFAULT_TRANSITIONS
    protected_aliases: tuple[AliasRule, ...] = ()
    separation_of_duties: bool = True
    demote_production_to: StageName = Stage.ARCHIVED
    request_ttl_seconds: int = DEFAULT_REQUEST_TTL_SECONDS
    # None: a rollback needs what a promotion to production needs; a number overrides that.
    rollback_approvals: int | None = None
    stages: tuple[StageDefinition, ...] | msgspec.UnsetType = msgspec.UNSET
    initial_stage: StageName | msgspec.UnsetType = msgspec.UNSET

    def has_metric_gates(self) -> bool:
        """Whether any move or protected alias is gated on metrics: only then does a
        decision under this policy read them."""
        return any(r.gates for r in self.transitions) or any(
            a.gates for a in self.protected_aliases
        )

    # --- the lifecycle's stages ---------------------------------------------------------

    def stage_definitions(self) -> tuple[StageDefinition, ...]:
        return DEFAULT_STAGES if isinstance(self.stages, msgspec.UnsetType) else self.stages

    def stage_names(self) -> tuple[StageName, ...]:
        return tuple(d.name for d in self.stage_definitions())

    def stage(self, name: StageName) -> StageDefinition | None:
        return next((d for d in self.stage_definitions() if d.name == name), None)

    def defines(self, name: StageName) -> bool:
        return self.stage(name) is not None

    def initial(self) -> StageName:
        if not isinstance(self.initial_stage, msgspec.UnsetType):
            return self.initial_stage
        if isinstance(self.stages, msgspec.UnsetType):
            return INITIAL_STAGE
        return self.stages[0].name

    def is_terminal(self, name: StageName) -> bool:
        found = self.stage(name)
        return found is not None and found.terminal

    def is_exclusive(self, name: StageName) -> bool:
        found = self.stage(name)
        return found is not None and found.exclusive

    def environments(self, name: StageName) -> tuple[str, ...]:
        """The environments of stage ``name``; empty for a stage that is not per environment."""
        found = self.stage(name)
        return () if found is None else found.environment_names()

    def archive_stage(self) -> StageName | None:
        """Where ``ArchiveVersion`` (and MLflow's ``Archived``) goes: ``archived`` if the
        policy defines it as terminal, else its first terminal stage, else nowhere."""
        if self.is_terminal(Stage.ARCHIVED):
            return Stage.ARCHIVED
        return next((d.name for d in self.stage_definitions() if d.terminal), None)

    def demotion_target(self, name: StageName) -> StageName:
        """Where the version in exclusive stage ``name`` goes when another one enters it."""
        found = self.stage(name)
        if found is not None and found.demote_to is not None:
            return found.demote_to
        return self.demote_production_to

    def transition(self, source: StageName, target: StageName) -> TransitionRule | None:
        return next(
            (r for r in self.transitions if r.from_stage == source and r.to_stage == target), None
        )

    def alias_rule(self, alias: str) -> AliasRule | None:
        return next((r for r in self.protected_aliases if r.alias == alias), None)

    def production_approvals(self) -> int:
        """What the strictest way into production needs: the bar for any production change."""
        return self.entry_approvals(Stage.PRODUCTION)

    def entry_approvals(self, stage: StageName) -> int:
        """What the strictest way into ``stage`` needs."""
        return max((r.approvals for r in self.transitions if r.to_stage == stage), default=0)

    def rollback_requirement(self) -> int:
        if self.rollback_approvals is not None:
            return self.rollback_approvals
        return self.production_approvals()


DEFAULT_POLICY = GovernancePolicy()


class Requirement(msgspec.Struct, frozen=True, kw_only=True):
    """What one promotion needs under a policy; ``rules`` names where each part came from."""

    approvals: int = 0
    gates: tuple[MetricGate, ...] = ()
    rules: tuple[str, ...] = ()


class GateResult(msgspec.Struct, frozen=True, kw_only=True):
    """The evidence of one gate check, recorded in ``model.promotion_executed``."""

    gate: MetricGate
    value: float | None
    production_value: float | None
    passed: bool


def require_stage(policy: GovernancePolicy, stage: StageName, field: str) -> StageName:
    """``stage`` is a valid name the policy defines, else a ``ValidationError`` on ``field``."""
    validate_stage_name(stage, field)
    if not policy.defines(stage):
        raise ValidationError(
            field,
            "undefined_stage",
            f"the governance policy defines no stage {stage!r}"
            f" (it defines {', '.join(policy.stage_names())})",
            stage=stage,
            stages=list(policy.stage_names()),
        )
    return stage


def require_environment(
    policy: GovernancePolicy, stage: StageName | None, environment: str | None, field: str
) -> str | None:
    """The environment a move into ``stage`` names: one of the stage's environments when it
    has some (required then), none otherwise. ``ValidationError`` on ``field``."""
    environments = () if stage is None else policy.environments(stage)
    if not environments:
        if environment is not None:
            raise ValidationError(
                field,
                "no_environments",
                f"stage {stage!r} is not per environment: leave {field} out",
                stage=stage,
            )
        return None
    if environment is None:
        raise ValidationError(
            field,
            "required",
            f"stage {stage!r} is per environment: name one of {', '.join(environments)}",
            environments=list(environments),
        )
    if environment not in environments:
        raise ValidationError(
            field,
            "undefined_environment",
            f"stage {stage!r} has no environment {environment!r}"
            f" (it has {', '.join(environments)})",
            environment=environment,
            environments=list(environments),
        )
    return environment


def requirement(
    policy: GovernancePolicy,
    source: StageName,
    target: StageName | None,
    alias: str | None,
    field: str = "to_stage",
) -> Requirement:
    """Combine the stage transition's rule and the protected alias's rule (the stricter wins).

    Raises ``ValidationError`` (rule ``undefined_stage``) on ``field`` when the policy does
    not define ``target``, and ``InvalidTransitionError`` when it has no ``source -> target``
    transition.
    """
    approvals = 0
    gates: tuple[MetricGate, ...] = ()
    rules: tuple[str, ...] = ()
    if target is not None and target == source:
        # Another environment of the stage the version is in: what the strictest way into
        # the stage needs, since it changes what serves there.
        require_stage(policy, target, field)
        entries = [r for r in policy.transitions if r.to_stage == target]
        strictest = max(entries, key=lambda r: r.approvals, default=None)
        if strictest is not None:
            approvals, gates = strictest.approvals, strictest.gates
        rules = (f"environment_entry:{target}",)
    elif target is not None:
        require_stage(policy, target, field)
        rule = policy.transition(source, target)
        if rule is None:
            raise InvalidTransitionError(
                f"the governance policy has no transition {source} -> {target}",
                from_stage=str(source),
                to_stage=str(target),
            )
        approvals, gates, rules = rule.approvals, rule.gates, (f"transition:{source}->{target}",)
        if policy.is_exclusive(source) and policy.entry_approvals(source) > approvals:
            # Leaving production (or any exclusive stage) is a change of what serves: it
            # needs what entering does.
            approvals = policy.entry_approvals(source)
            rules = (
                *rules,
                "production_change" if source == Stage.PRODUCTION else "exclusive_change",
            )
    if alias is not None and (protected := policy.alias_rule(alias)) is not None:
        approvals = max(approvals, protected.approvals)
        gates = gates + protected.gates
        rules = (*rules, f"protected_alias:{alias}")
    return Requirement(approvals=approvals, gates=gates, rules=rules)


def _value(metrics: MetricSnapshot, version: int | None, gate: MetricGate) -> float | None:
    if version is None:
        return None
    return metrics.get(version, {}).get(gate.metric, {}).get(gate.dataset)


def evaluate_gates(
    gates: tuple[MetricGate, ...], version: int, production: int | None, metrics: MetricSnapshot
) -> tuple[GateResult, ...]:
    results = []
    for gate in gates:
        compare = _COMPARE[gate.op]
        value = _value(metrics, version, gate)
        baseline = (
            _value(metrics, production, gate)
            if gate.compare_to_production and production != version
            else None
        )
        passed = (
            value is not None
            and (gate.threshold is None or compare(value, gate.threshold))
            and (baseline is None or compare(value, baseline))
        )
        results.append(GateResult(gate=gate, value=value, production_value=baseline, passed=passed))
    return tuple(results)


def check_gates(
    gates: tuple[MetricGate, ...], version: int, production: int | None, metrics: MetricSnapshot
) -> tuple[GateResult, ...]:
    """Evaluate every gate; raise ``PolicyViolationError(rule="metric_gate")`` on the first failure."""
    results = evaluate_gates(gates, version, production, metrics)
    for result in results:
        if not result.passed:
            found = "no value" if result.value is None else f"{result.value!r}"
            raise PolicyViolationError(
                "metric_gate",
                f"version {version} fails the metric gate '{result.gate.describe()}' (it has {found})",
                gate=result.gate.describe(),
                value=result.value,
                production_value=result.production_value,
            )
    return results


def _validate_gates(gates: tuple[MetricGate, ...], field: str) -> None:
    if len(gates) > MAX_GATES:
        raise ValidationError(field, "too_many", f"at most {MAX_GATES} gates", max=MAX_GATES)
    for index, gate in enumerate(gates):
        where = f"{field}[{index}]"
        validate_key(gate.metric, f"{where}.metric")
        if gate.dataset:
            validate_dataset_name(gate.dataset, f"{where}.dataset")
        if gate.threshold is None and not gate.compare_to_production:
            raise ValidationError(
                where, "gate_needs_bound", "a gate needs a threshold or compare_to_production"
            )
        if gate.threshold is not None:
            validate_finite(gate.threshold, f"{where}.threshold")


def _validate_approvals(value: int, field: str, minimum: int) -> None:
    if not minimum <= value <= MAX_APPROVALS:
        raise ValidationError(
            field, "range", f"{field} must be between {minimum} and {MAX_APPROVALS}"
        )


def _validate_stages(policy: GovernancePolicy, field: str) -> None:
    definitions = policy.stage_definitions()
    if not 1 <= len(definitions) <= MAX_STAGES:
        raise ValidationError(
            f"{field}.stages", "range", f"a policy defines between 1 and {MAX_STAGES} stages"
        )
    seen: set[str] = set()
    for index, definition in enumerate(definitions):
        where = f"{field}.stages[{index}]"
        validate_stage_name(definition.name, f"{where}.name")
        if definition.name in seen:
            raise ValidationError(f"{where}.name", "unique", f"stage {definition.name!r} twice")
        seen.add(definition.name)
        if definition.terminal and definition.exclusive:
            raise ValidationError(
                where, "terminal_not_exclusive", "a terminal stage cannot also be exclusive"
            )
        if definition.name == Stage.PRODUCTION and not definition.exclusive:
            raise ValidationError(
                f"{where}.exclusive",
                "production_is_exclusive",
                "the stage named production holds one version at a time (rollback relies on it)",
            )
        _validate_environments(definition, where)
        if definition.demote_to is not None and not definition.exclusive:
            raise ValidationError(
                f"{where}.demote_to", "exclusive_only", "only an exclusive stage demotes"
            )
    initial = policy.initial()
    where = f"{field}.initial_stage"
    require_stage(policy, initial, where)
    if policy.is_terminal(initial) or policy.is_exclusive(initial):
        raise ValidationError(
            where, "initial_is_plain", "the initial stage can be neither terminal nor exclusive"
        )
    for index, definition in enumerate(definitions):
        if definition.exclusive:
            target = policy.demotion_target(definition.name)
            source = (
                f"{field}.stages[{index}].demote_to"
                if definition.demote_to is not None
                else f"{field}.demote_production_to"
            )
            require_stage(policy, target, source)
            if policy.is_exclusive(target):
                raise ValidationError(
                    source, "not_production", "demotion must leave the exclusive stage"
                )


def _validate_environments(definition: StageDefinition, where: str) -> None:
    environments = definition.environment_names()
    if isinstance(definition.environments, msgspec.UnsetType):
        return
    if definition.terminal or not 1 <= len(environments) <= MAX_ENVIRONMENTS:
        raise ValidationError(
            f"{where}.environments",
            "range",
            f"a non-terminal stage lists between 1 and {MAX_ENVIRONMENTS} environments"
            " (a terminal stage none)",
        )
    for index, environment in enumerate(environments):
        validate_place(environment, f"{where}.environments[{index}]")
    if len(set(environments)) != len(environments):
        raise ValidationError(f"{where}.environments", "unique", "an environment is listed twice")


def validate_policy(policy: GovernancePolicy, field: str = "policy") -> None:
    """Refuse policies that contradict the lifecycle (e.g. a way out of ``archived``)."""
    _validate_stages(policy, field)
    pairs: set[tuple[str, str]] = set()
    for index, rule in enumerate(policy.transitions):
        where = f"{field}.transitions[{index}]"
        require_stage(policy, rule.from_stage, f"{where}.from_stage")
        require_stage(policy, rule.to_stage, f"{where}.to_stage")
        if rule.from_stage == rule.to_stage:
            raise ValidationError(where, "no_op_transition", "a transition must change the stage")
        if policy.is_terminal(rule.from_stage):
            raise ValidationError(
                where,
                "archived_is_final",
                f"no transition leaves {rule.from_stage} (a terminal stage); an admin restore does",
            )
        if (rule.from_stage, rule.to_stage) in pairs:
            raise ValidationError(
                where, "unique", f"transition {rule.from_stage} -> {rule.to_stage} twice"
            )
        pairs.add((rule.from_stage, rule.to_stage))
        _validate_approvals(rule.approvals, f"{where}.approvals", 0)
        _validate_gates(rule.gates, f"{where}.gates")
    if len(policy.protected_aliases) > MAX_PROTECTED_ALIASES:
        raise ValidationError(
            f"{field}.protected_aliases", "too_many", f"at most {MAX_PROTECTED_ALIASES}"
        )
    aliases: set[str] = set()
    for index, alias_rule in enumerate(policy.protected_aliases):
        where = f"{field}.protected_aliases[{index}]"
        validate_alias(alias_rule.alias, f"{where}.alias")
        if alias_rule.alias in aliases:
            raise ValidationError(f"{where}.alias", "unique", f"alias {alias_rule.alias!r} twice")
        aliases.add(alias_rule.alias)
        _validate_approvals(alias_rule.approvals, f"{where}.approvals", 1)
        _validate_gates(alias_rule.gates, f"{where}.gates")
    if policy.demote_production_to == Stage.PRODUCTION:
        raise ValidationError(
            f"{field}.demote_production_to", "not_production", "demotion must leave production"
        )
    validate_stage_name(policy.demote_production_to, f"{field}.demote_production_to")
    if not MIN_REQUEST_TTL_SECONDS <= policy.request_ttl_seconds <= MAX_REQUEST_TTL_SECONDS:
        raise ValidationError(
            f"{field}.request_ttl_seconds",
            "range",
            f"request_ttl_seconds must be between {MIN_REQUEST_TTL_SECONDS} and {MAX_REQUEST_TTL_SECONDS}",
        )
    if policy.rollback_approvals is not None:
        _validate_approvals(policy.rollback_approvals, f"{field}.rollback_approvals", 0)
