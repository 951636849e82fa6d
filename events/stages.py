"""The lifecycle stages of a model version and the kinds of stage change. Pure.

    development ⇄ staging → production        (the default policy's transitions)
    any stage → archived                      (archived is final, except for an admin
                                               restore and the one-step rollback)

A new version starts in ``development``. At most one version of a model is in
``production``; promoting another one demotes it in the same append.
"""

from __future__ import annotations

import enum


class Stage(enum.StrEnum):
    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"
    ARCHIVED = "archived"


INITIAL_STAGE = Stage.DEVELOPMENT


class TransitionKind(enum.StrEnum):
    """Why a stage changed, so projections need not infer it from neighbouring events."""

    DIRECT = "direct"  # a TransitionStage / ArchiveVersion command the policy let through
    PROMOTION = "promotion"  # an approved (or approval-free) promotion request was executed
    DEMOTION = "demotion"  # the previous production version made room for a new one
    ROLLBACK = "rollback"  # the previous production version was re-promoted
    RESTORE = "restore"  # an admin brought an archived version back to development
