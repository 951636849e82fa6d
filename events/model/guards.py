"""Preconditions shared by the ``model`` stream's decisions. Pure."""

from __future__ import annotations

from collections.abc import Mapping

from events.errors import ConflictError, InvalidTransitionError, NotFoundError, ValidationError
from events.model.state import ModelState, VersionState
from events.names import MAX_TAGS, validate_tag_keys, validate_tags
from events.policy import GovernancePolicy

MAX_ALIASES = 100


def require_registered(state: ModelState) -> ModelState:
    if not state.registered:
        raise NotFoundError("no model is registered in this stream")
    if state.deleted:
        raise NotFoundError(f"model {state.name!r} was deleted", model_id=state.model_id)
    return state


def require_active(state: ModelState) -> ModelState:
    """Registered and not archived: an archived model accepts only restore, deployment
    reports and the closing of open requests."""
    require_registered(state)
    if state.archived:
        raise ConflictError(
            f"model {state.name!r} is archived; restore it first", model_id=state.model_id
        )
    return state


def require_live_version(
    state: ModelState, number: int, purpose: str, policy: GovernancePolicy
) -> VersionState:
    """A version that may become a promotion or alias target: not archived (in a terminal
    stage, or one the policy does not define), not deprecated."""
    version = state.version(number)
    if policy.is_terminal(version.stage) or not policy.defines(version.stage):
        raise InvalidTransitionError(
            f"version {number} is archived and cannot be {purpose}; an admin can restore it",
            version=number,
            stage=str(version.stage),
        )
    if version.deprecated:
        raise InvalidTransitionError(
            f"version {number} is deprecated and cannot be {purpose}", version=number
        )
    return version


def changed_tags(
    current: Mapping[str, str], tags: Mapping[str, str], field: str = "tags"
) -> dict[str, str]:
    """Validate ``tags`` and return only the entries that differ from ``current``."""
    validate_tags(tags, field)
    changes = {k: v for k, v in tags.items() if current.get(k) != v}
    if len({**current, **changes}) > MAX_TAGS:
        raise ValidationError(
            field, "too_many", f"an entity has at most {MAX_TAGS} tags", max=MAX_TAGS
        )
    return changes


def present_keys(
    current: Mapping[str, str], keys: tuple[str, ...], field: str = "keys"
) -> tuple[str, ...]:
    """Validate ``keys`` and keep those that are set (removing an absent tag is a no-op)."""
    validate_tag_keys(keys, field)
    return tuple(dict.fromkeys(k for k in keys if k in current))
