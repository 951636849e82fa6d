"""What actually runs: deployments reported by deployment systems, and drift. Pure.

A deployment puts one version at one (environment, target), e.g. (``prod``,
``k8s/churn-api``). Its life: ``started`` -> ``succeeded`` | ``failed``, and ``started`` or
``succeeded`` -> ``rolled_back``. A succeeded deployment becomes *live* at its place,
replacing the one that was; rolling back a live deployment makes the one it replaced live
again. These are reports of facts, so they are accepted for archived models and versions.

``desired_stage``/``desired_alias`` say what the deployment system follows;
``compare_deployments`` sets that desire against the registry's stages and aliases.
"""

from __future__ import annotations

import msgspec

from events.errors import AlreadyExistsError, InvalidTransitionError, NotFoundError, ValidationError
from events.model.commands import (
    ReportDeploymentFailed,
    ReportDeploymentRolledBack,
    ReportDeploymentSucceeded,
    StartDeployment,
)
from events.model.events import (
    DeploymentFailed,
    DeploymentRolledBack,
    DeploymentStarted,
    DeploymentSucceeded,
    ModelEvent,
)
from events.model.guards import require_registered
from events.model.state import DeploymentState, DeploymentStatus, ModelState
from events.names import (
    validate_alias,
    validate_comment,
    validate_id,
    validate_place,
)
from events.policy import require_stage
from events.stages import Stage


def _deployment(
    state: ModelState, deployment_id: str, allowed: tuple[DeploymentStatus, ...], to: str
) -> DeploymentState:
    deployment = state.deployments.get(deployment_id)
    if deployment is None:
        raise NotFoundError(f"no deployment {deployment_id}", deployment_id=deployment_id)
    if deployment.status not in allowed:
        raise InvalidTransitionError(
            f"deployment {deployment_id} is {deployment.status} and cannot become {to}",
            deployment_id=deployment_id,
            status=str(deployment.status),
        )
    return deployment


def _live(state: ModelState, deployment: DeploymentState) -> str | None:
    return state.live.get(deployment.environment, {}).get(deployment.target)


def start_deployment(command: StartDeployment, state: ModelState) -> list[ModelEvent]:
    require_registered(state)
    validate_id(command.deployment_id, "deployment_id")
    if command.deployment_id in state.deployments:
        raise AlreadyExistsError(
            f"deployment {command.deployment_id} exists", deployment_id=command.deployment_id
        )
    state.version(command.version)
    validate_place(command.environment, "environment")
    validate_place(command.target, "target")
    if command.desired_stage is not None and command.desired_alias is not None:
        raise ValidationError(
            "desired_alias", "one_of", "a deployment follows a stage or an alias, not both"
        )
    if command.desired_stage is not None:
        policy = state.effective_policy(command.registry_policy)
        require_stage(policy, command.desired_stage, "desired_stage")
        if policy.is_terminal(command.desired_stage):
            raise ValidationError(
                "desired_stage", "not_archived", "a deployment cannot follow a terminal stage"
            )
    if command.desired_alias is not None:
        validate_alias(command.desired_alias, "desired_alias")
    validate_comment(command.comment)
    return [
        DeploymentStarted(
            deployment_id=command.deployment_id,
            version=command.version,
            environment=command.environment,
            target=command.target,
            desired_stage=command.desired_stage,
            desired_alias=command.desired_alias,
            comment=command.comment,
        )
    ]


def report_succeeded(command: ReportDeploymentSucceeded, state: ModelState) -> list[ModelEvent]:
    require_registered(state)
    validate_comment(command.comment)
    deployment = _deployment(state, command.deployment_id, (DeploymentStatus.STARTED,), "succeeded")
    return [
        DeploymentSucceeded(
            deployment_id=command.deployment_id,
            replaced_deployment_id=_live(state, deployment),
            comment=command.comment,
        )
    ]


def report_failed(command: ReportDeploymentFailed, state: ModelState) -> list[ModelEvent]:
    require_registered(state)
    validate_comment(command.reason, "reason", required=True)
    _deployment(state, command.deployment_id, (DeploymentStatus.STARTED,), "failed")
    return [DeploymentFailed(deployment_id=command.deployment_id, reason=command.reason)]


def report_rolled_back(command: ReportDeploymentRolledBack, state: ModelState) -> list[ModelEvent]:
    require_registered(state)
    validate_comment(command.reason, "reason", required=True)
    deployment = _deployment(
        state,
        command.deployment_id,
        (DeploymentStatus.STARTED, DeploymentStatus.SUCCEEDED),
        "rolled back",
    )
    live = _live(state, deployment)
    restored = live
    if live == deployment.deployment_id:
        replaced = deployment.replaced_deployment_id
        still_good = (
            replaced is not None
            and state.deployments[replaced].status == DeploymentStatus.SUCCEEDED
        )
        restored = replaced if still_good else None
    return [
        DeploymentRolledBack(
            deployment_id=command.deployment_id,
            restored_deployment_id=restored,
            reason=command.reason,
        )
    ]


class DeploymentDrift(msgspec.Struct, frozen=True, kw_only=True):
    """One live deployment against its desire. ``desired_version`` is None when the desire
    names no single version (a stage other than production, or an unset alias)."""

    environment: str
    target: str
    deployment_id: str
    deployed_version: int
    desired: str
    desired_version: int | None
    in_sync: bool


def compare_deployments(state: ModelState) -> tuple[DeploymentDrift, ...]:
    """Every live deployment that follows a stage or an alias, in sync or not, sorted by place."""
    drifts = []
    for environment in sorted(state.live):
        for target, deployment_id in sorted(state.live[environment].items()):
            deployment = state.deployments[deployment_id]
            deployed = state.versions[deployment.version]
            if deployment.desired_alias is not None:
                desired = f"alias:{deployment.desired_alias}"
                desired_version = state.aliases.get(deployment.desired_alias)
                in_sync = desired_version == deployed.number
            elif deployment.desired_stage is not None:
                desired = f"stage:{deployment.desired_stage}"
                # With production per environment, the one in production here.
                desired_version = (
                    state.champion(environment)
                    if deployment.desired_stage == Stage.PRODUCTION
                    else None
                )
                in_sync = (
                    desired_version == deployed.number
                    if deployment.desired_stage == Stage.PRODUCTION
                    else deployed.stage == deployment.desired_stage
                )
            else:
                continue
            drifts.append(
                DeploymentDrift(
                    environment=environment,
                    target=target,
                    deployment_id=deployment_id,
                    deployed_version=deployed.number,
                    desired=desired,
                    desired_version=desired_version,
                    in_sync=in_sync,
                )
            )
    return tuple(drifts)
