"""The lifecycle stages of a model version and the kinds of stage change. Pure.

Stages are defined by the governance policy (``GovernancePolicy.stages``): a name, an
order, and two flags. The policy also names the initial stage (where new versions start).

* **terminal** (archived-like): no transition leaves it, aliases are removed from a version
  that enters it, and only an admin restore (back to the initial stage) brings it back;
* **exclusive** (production-like): at most one version of a model is in it; moving another
  version in demotes the current one, in the same append, to the policy's
  ``demote_production_to`` (or the stage's own ``demote_to``).

The default policy keeps the four stages modelreg always had, so every event recorded
before stages became configurable folds the same:

    development ⇄ staging → production        (the default policy's transitions)
    any stage → archived                      (archived is final, except for an admin
                                               restore and the one-step rollback)

A stage name is a validated string (``events.names.validate_stage_name``). ``Stage``
keeps the four default names as constants; ``production`` and ``archived`` keep two
meanings whatever the policy says: a rollback re-promotes to the stage named
``production`` (which a policy must keep exclusive if it defines it), and ``ArchiveVersion``
/ MLflow's ``Archived`` move to the policy's archive stage (``archived`` if defined, else
its first terminal stage).
"""

from __future__ import annotations

import enum

import msgspec

# A stage name as it crosses the API and sits in events: any validated string.
StageName = str


class Stage(enum.StrEnum):
    """The default policy's four stages, as constants."""

    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"
    ARCHIVED = "archived"


INITIAL_STAGE = Stage.DEVELOPMENT


class StageDefinition(msgspec.Struct, frozen=True, kw_only=True):
    """One stage of a policy's lifecycle; ``demote_to`` (exclusive stages only) overrides
    the policy's ``demote_production_to`` for this stage.

    ``environments`` (e.g. ``eu``, ``us``) makes the stage per environment: a version may be
    in it in several environments at once, every move into it names one, and exclusivity
    holds per environment. Unset (no environments) is left out of the encoded policy, so
    policies recorded before environments keep their bytes.
    """

    name: StageName
    terminal: bool = False
    exclusive: bool = False
    demote_to: StageName | None = None
    environments: tuple[str, ...] | msgspec.UnsetType = msgspec.UNSET

    def environment_names(self) -> tuple[str, ...]:
        return () if isinstance(self.environments, msgspec.UnsetType) else self.environments


DEFAULT_STAGES: tuple[StageDefinition, ...] = (
    StageDefinition(name=Stage.DEVELOPMENT),
    StageDefinition(name=Stage.STAGING),
    StageDefinition(name=Stage.PRODUCTION, exclusive=True),
    StageDefinition(name=Stage.ARCHIVED, terminal=True),
)


class TransitionKind(enum.StrEnum):
    """Why a stage changed, so projections need not infer it from neighbouring events."""

    DIRECT = "direct"  # a TransitionStage / ArchiveVersion command the policy let through
    PROMOTION = "promotion"  # an approved (or approval-free) promotion request was executed
    DEMOTION = "demotion"  # the previous production version made room for a new one
    ROLLBACK = "rollback"  # the previous production version was re-promoted
    RESTORE = "restore"  # an admin brought an archived version back to development


def placement(stage: StageName, environment: str | None) -> str:
    """How a stage in one environment is shown and keyed: ``production@eu``."""
    return stage if environment is None else f"{stage}@{environment}"
