"""Every view's pure ``evolve``, folded over logs built in memory: no database.

The database-backed tests (tests/integration/test_view_*.py) prove that load and write
store what ``evolve`` returns; these pin what it returns, and the two properties a
rebuild relies on: ``evolve`` leaves the rows it was given alone, and where a batch ends
changes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest

from eventlog.log import LoggedEvent
from events.access import TOKEN_EVENT_TYPES
from events.access_grants import ACCESS_EVENT_TYPES
from events.artifacts import ARTIFACT_EVENT_TYPES
from events.blob_collection import BLOB_COLLECTION_EVENT_TYPES
from events.model.commands import (
    ApprovePromotion,
    ArchiveModel,
    CancelPromotion,
    ClearModelPolicy,
    DeleteModel,
    DeprecateVersion,
    ExpirePromotion,
    RegisterModel,
    RegisterVersion,
    RejectPromotion,
    RemoveAlias,
    RemoveModelTags,
    RemoveVersionTags,
    RenameModel,
    ReportDeploymentFailed,
    ReportDeploymentRolledBack,
    ReportDeploymentSucceeded,
    RequestPromotion,
    RestoreModel,
    SetAlias,
    SetModelPolicy,
    SetModelTags,
    SetVersionTags,
    StartDeployment,
    TransitionStage,
    UpdateModelDescription,
    UpdateVersionDescription,
)
from events.model.events import StageTransitioned
from events.policy import AliasRule, GovernancePolicy, TransitionRule
from events.stages import Stage
from events.subjects import SUBJECT_EVENT_TYPES
from events.webhooks import WEBHOOK_EVENT_TYPES
from projections.base import Projection
from projections.views import (
    ALL,
    approvals,
    audit_timeline,
    deployments,
    metric_history,
    model_catalogue,
    model_versions,
    stage_timeline,
)
from projections.views.model_catalogue import CatalogueRows, ModelRow
from projections.views.model_versions import VersionRows
from tests.support.log_in_memory import Log
from tests.support.policies import PERMISSIVE_TRANSITIONS, permissive
from tests.unit.domain_helpers import content

M1, M2, M3 = "m1", "m2", "m3"
# Production and the champion alias need one approval; separation of duties holds.
GATED = GovernancePolicy(
    transitions=tuple(
        TransitionRule(from_stage=r.from_stage, to_stage=r.to_stage, approvals=1)
        if r.to_stage == Stage.PRODUCTION
        else r
        for r in PERMISSIVE_TRANSITIONS
    ),
    protected_aliases=(AliasRule(alias="champion", approvals=1),),
)

EMPTY: dict[str, Callable[[], Any]] = {
    approvals.PROJECTION.name: approvals.ApprovalRows,
    audit_timeline.PROJECTION.name: dict,
    deployments.PROJECTION.name: deployments.DeploymentRows,
    metric_history.PROJECTION.name: dict,
    model_catalogue.PROJECTION.name: CatalogueRows,
    model_versions.PROJECTION.name: VersionRows,
    stage_timeline.PROJECTION.name: stage_timeline.TimelineRows,
}


def fold(projection: Projection, events: Sequence[LoggedEvent], rows: Any = None) -> Any:
    """What the runner hands the view: only the events it handles, in log order."""
    handled = [e for e in events if e.event_type in projection.handles]
    start = EMPTY[projection.name]() if rows is None else rows
    return projection.fold.evolve(start, handled)


def registered(log: Log, model_id: str, name: str, versions: int, **fields: Any) -> None:
    log.model(model_id, RegisterModel, model_id=model_id, name=name, owner="team-risk", **fields)
    for n in range(versions):
        log.model(model_id, RegisterVersion, content=content(n + 1))


def rich_history() -> Log:
    """Every event type every view handles, on two models."""
    log = Log()
    log.registry_policy(permissive(separation_of_duties=False))
    registered(log, M1, "churn", 3, tags={"team": "risk"})
    registered(log, M2, "fraud", 1)
    log.metrics(M1, 1, auc=0.8, loss=0.5)
    log.metrics(M1, 1, step=2, auc=0.85)
    log.metrics(M1, 1, step=1, auc=0.99)
    log.model(M1, SetModelTags, tags={"tier": "gold"})
    log.model(M1, RemoveModelTags, keys=["team"])
    log.model(M1, UpdateModelDescription, description="who leaves")
    log.model(M1, SetVersionTags, version=1, tags={"k": "v", "gone": "soon"})
    log.model(M1, RemoveVersionTags, version=1, keys=("gone",))
    log.model(M1, UpdateVersionDescription, version=2, description="second")
    for version in (1, 2, 3):
        log.model(M1, TransitionStage, version=version, to_stage=Stage.STAGING)
    log.model(M1, TransitionStage, version=1, to_stage=Stage.PRODUCTION)
    log.model(M1, SetAlias, alias="champion", version=1)
    log.model(M1, SetAlias, alias="challenger", version=3)
    log.model(M1, SetModelPolicy, policy=GATED)
    log.model(M1, StartDeployment, deployment_id="d1", version=1, environment="prod", target="eu", desired_alias="champion")  # fmt: skip
    log.model(M1, ReportDeploymentSucceeded, deployment_id="d1", actor="deployer")
    log.model(M1, RequestPromotion, request_id="r1", version=2, target_stage=Stage.PRODUCTION, alias="champion", justification="better")  # fmt: skip
    log.model(M1, ApprovePromotion, request_id="r1", actor="bob", comment="ok")
    log.model(M1, StartDeployment, deployment_id="d2", version=2, environment="prod", target="eu", desired_alias="champion")  # fmt: skip
    log.model(M1, ReportDeploymentSucceeded, deployment_id="d2", actor="deployer")
    log.model(M1, StartDeployment, deployment_id="d3", version=3, environment="prod", target="us")
    log.model(M1, ReportDeploymentFailed, deployment_id="d3", reason="oom", actor="deployer")
    log.model(M1, ReportDeploymentRolledBack, deployment_id="d2", reason="slow", actor="deployer")
    for request_id in ("r2", "r3", "r4"):
        log.model(M1, RequestPromotion, request_id=request_id, version=3, target_stage=Stage.PRODUCTION, alias="champion", justification="try")  # fmt: skip
        if request_id == "r2":
            log.model(M1, RejectPromotion, request_id="r2", comment="no", actor="bob")
        elif request_id == "r3":
            log.model(M1, CancelPromotion, request_id="r3", comment="later")
    expiry = log.state(M1).requests["r4"].expires_at
    log.model(M1, ExpirePromotion, request_id="r4", actor="system", at=expiry)
    log.model(M1, ClearModelPolicy)
    log.model(M1, RemoveAlias, alias="challenger")
    log.model(M1, DeprecateVersion, version=3, reason="superseded")
    log.metrics(M1, 3, auc=0.7)
    log.model(M2, RenameModel, new_name="fraud-v2")
    log.model(M2, ArchiveModel, reason="retired")
    log.model(M2, RestoreModel, reason="back")
    log.metrics(M2, 1, step=5, precision=0.4)
    registered(log, M3, "scratch", 2)
    log.metrics(M3, 2, auc=0.5)
    log.model(M3, RequestPromotion, request_id="r5", version=1, target_stage=Stage.STAGING, justification="try")  # fmt: skip
    log.model(M3, DeleteModel, reason="created by mistake")
    return log


# --- properties of every view ----------------------------------------------------------


def test_every_view_has_empty_rows_to_fold_from() -> None:
    assert sorted(EMPTY) == sorted(p.name for p in ALL)


@pytest.mark.parametrize("projection", ALL, ids=lambda p: p.name)
def test_the_rich_history_holds_every_event_type_a_view_handles(projection: Projection) -> None:
    # Token, access, blob, webhook and subject events reach only the audit timeline, which describes every
    # event the same way.
    only_audited = {
        t.event_type
        for t in (
            *TOKEN_EVENT_TYPES,
            *ACCESS_EVENT_TYPES,
            *ARTIFACT_EVENT_TYPES,
            *BLOB_COLLECTION_EVENT_TYPES,
            *WEBHOOK_EVENT_TYPES,
            *SUBJECT_EVENT_TYPES,
        )
    }
    seen = {e.event_type for e in rich_history().events}
    assert projection.handles - only_audited <= seen


@pytest.mark.parametrize("projection", ALL, ids=lambda p: p.name)
def test_evolve_leaves_the_rows_it_was_given_as_they_were(projection: Projection) -> None:
    # given the rows after the first half of a rich history
    events = rich_history().events
    half = len(events) // 2
    rows = fold(projection, events[:half])
    before = copy.deepcopy(rows)

    # when the second half is folded into them
    after = fold(projection, events[half:], rows)

    # then the rows given are unchanged, and the new rows differ
    assert rows == before
    assert after != before


@pytest.mark.parametrize("projection", ALL, ids=lambda p: p.name)
def test_where_a_batch_ends_changes_nothing(projection: Projection) -> None:
    # given a rich history folded in one batch
    events = rich_history().events
    whole = fold(projection, events)

    # when it is folded in two batches, split anywhere, and one event at a time
    for cut in range(1, len(events)):
        # then the rows are the same
        assert fold(projection, events[cut:], fold(projection, events[:cut])) == whole, cut
    one_by_one = EMPTY[projection.name]()
    for event in events:
        one_by_one = fold(projection, [event], one_by_one)
    assert one_by_one == whole


# --- model_catalogue ---------------------------------------------------------------------


def test_the_catalogue_shows_facts_stages_aliases_and_counts() -> None:
    # given a model with three versions: one in production under an alias, one in staging
    log = Log()
    registered(log, M1, "churn", 3, tags={"team": "risk"}, description="who leaves")
    created = log.now
    log.model(M1, TransitionStage, version=1, to_stage=Stage.STAGING)
    log.model(M1, TransitionStage, version=1, to_stage=Stage.PRODUCTION)
    log.model(M1, TransitionStage, version=2, to_stage=Stage.STAGING)
    log.model(M1, SetAlias, alias="champion", version=1)
    log.model(M1, SetModelTags, tags={"tier": "gold"})

    # when the catalogue folds the log
    rows = fold(model_catalogue.PROJECTION, log.events)

    # then the row shows all of it
    assert rows.models[M1] == ModelRow(
        model_id=M1,
        name="churn",
        description="who leaves",
        tags={"team": "risk", "tier": "gold"},
        owner="team-risk",
        archived=False,
        latest_version=3,
        version_count=3,
        stages={"development": 3, "staging": 2, "production": 1, "archived": None},
        stage_counts={"development": 1, "staging": 1, "production": 1, "archived": 0},
        aliases={"champion": 1},
        created_at=created - timedelta(seconds=3),
        updated_at=log.now,
        position=len(log.events),
    )
    assert rows.named_at == {M1: 1}


def test_a_stage_summary_counts_the_versions_a_batch_did_not_touch() -> None:
    # given the catalogue rows of a model with three versions in development, as loaded:
    # with every version's stage, since the next batch moves one of them
    log = Log()
    registered(log, M1, "churn", 3)
    loaded = fold(model_catalogue.PROJECTION, log.events)
    # (each with the environments of its stage it is in: none here)
    assert loaded.stages == {(M1, n): ("development", ()) for n in (1, 2, 3)}

    # when a batch moves version 2 to staging
    moved = log.model(M1, TransitionStage, version=2, to_stage=Stage.STAGING)
    rows = fold(model_catalogue.PROJECTION, moved, loaded)

    # then the summary counts the two versions the batch did not mention too
    assert rows.models[M1].stages == {"development": 3, "staging": 2, "production": None, "archived": None}  # fmt: skip
    assert rows.models[M1].stage_counts == {"development": 2, "staging": 1, "production": 0, "archived": 0}  # fmt: skip


def test_a_registration_counts_its_version_onto_the_summary_without_the_other_stages() -> None:
    # given the catalogue row of a model with three versions, one of them in staging, as
    # loaded for a batch that only registers versions: without any version's stage
    log = Log()
    registered(log, M1, "churn", 3)
    log.model(M1, TransitionStage, version=2, to_stage=Stage.STAGING)
    whole = fold(model_catalogue.PROJECTION, log.events)
    loaded = model_catalogue.CatalogueRows(models=dict(whole.models), named_at=dict(whole.named_at))

    # when a batch registers version 4
    batch = log.model(M1, RegisterVersion, content=content(4))
    rows = fold(model_catalogue.PROJECTION, batch, loaded)

    # then the summary counts it with the three it did not load, as a fold of it all does
    assert rows.models[M1].stages == {"development": 4, "staging": 2, "production": None, "archived": None}  # fmt: skip
    assert rows.models[M1].stage_counts == {"development": 3, "staging": 1, "production": 0, "archived": 0}  # fmt: skip
    assert rows.models[M1] == fold(model_catalogue.PROJECTION, batch, whole).models[M1]
    # and the new version's stage is the one stage row the batch writes
    assert rows.stages == {(M1, 4): ("development", ())}


def test_a_rename_moves_the_position_that_named_the_model() -> None:
    log = Log()
    registered(log, M1, "churn", 0)
    renamed = log.model(M1, RenameModel, new_name="attrition")
    rows = fold(model_catalogue.PROJECTION, log.events)
    assert (rows.models[M1].name, rows.named_at[M1]) == ("attrition", renamed[0].log_position)


# --- model_versions ------------------------------------------------------------------------


def test_a_versions_latest_metric_is_the_highest_step_then_the_latest_point() -> None:
    # given a version whose auc is logged at steps 0, 2, then 1, and then again at step 2
    log = Log()
    registered(log, M1, "churn", 1)
    registered_at = log.now
    first = log.metrics(M1, 1, auc=0.8, loss=0.5)[0]
    at_step_2 = log.metrics(M1, 1, step=2, auc=0.85)[0]
    log.metrics(M1, 1, step=1, auc=0.99)

    # when the versions view folds the log
    rows = fold(model_versions.PROJECTION, log.events)

    # then step 2 wins over the later step 1, and each row copies the registration time
    auc = (0.85, 2, at_step_2.envelope.occurred_at, at_step_2.log_position, registered_at)
    loss = (0.5, 0, first.envelope.occurred_at, first.log_position, registered_at)
    assert rows.metrics == {(M1, 1, "auc", ""): auc, (M1, 1, "loss", ""): loss}

    # and a later point at the same step replaces it
    again = log.metrics(M1, 1, step=2, auc=0.86)
    assert fold(model_versions.PROJECTION, again, rows).metrics[(M1, 1, "auc", "")][0] == 0.86


def test_a_metric_logged_before_its_version_is_registered_folds_alike_in_any_batches() -> None:
    # given a log where a metric batch precedes its version's registration (the service
    # never writes one: it logs metrics only for registered versions)
    log = Log()
    registered(log, M1, "churn", 0)
    log.metrics(M1, 1, auc=0.8)
    log.model(M1, RegisterVersion, content=content(1))
    log.metrics(M1, 1, step=1, auc=0.9)

    # when it is folded in one batch, and in two split anywhere
    versions, events = model_versions.PROJECTION, log.events
    whole = fold(versions, events)
    splits = [
        fold(versions, events[cut:], fold(versions, events[:cut])) for cut in range(1, len(events))
    ]

    # then the row keeps the registration time it knew at its first point: none
    assert whole.metrics[(M1, 1, "auc", "")][4] is None
    assert all(split == whole for split in splits)


def test_a_version_row_follows_its_stage_aliases_and_tags() -> None:
    # given a version staged, tagged and named champion, then moved off by a later alias
    log = Log()
    registered(log, M1, "churn", 2)
    log.model(M1, TransitionStage, version=1, to_stage=Stage.STAGING)
    staged_at = log.now
    log.model(M1, SetVersionTags, version=1, tags={"k": "v"})
    log.model(M1, SetAlias, alias="champion", version=1)
    log.model(M1, SetAlias, alias="best", version=1)
    log.model(M1, SetAlias, alias="champion", version=2)

    # when the versions view folds the log
    rows = fold(model_versions.PROJECTION, log.events)

    # then version 1 keeps only the alias still on it; the move touched both versions
    first, second = rows.versions[(M1, 1)], rows.versions[(M1, 2)]
    assert (first.stage, first.stage_since, first.tags) == ("staging", staged_at, {"k": "v"})
    assert (first.aliases, second.aliases) == (("best",), ("champion",))
    assert first.updated_at == second.updated_at == log.now


# --- stage_timeline ------------------------------------------------------------------------


def test_a_stage_move_closes_the_interval_the_version_leaves() -> None:
    log = Log()
    registered(log, M1, "churn", 1)
    moved = log.model(M1, TransitionStage, version=1, to_stage=Stage.STAGING, actor="bob")

    rows = fold(stage_timeline.PROJECTION, log.events)

    development, staging = sorted(rows.stages.values(), key=lambda i: i.from_position)
    assert (development.stage, development.to_position, development.left_by) == (
        "development",
        moved[0].log_position,
        "bob",
    )
    assert (staging.stage, staging.to_position, staging.entered_by) == ("staging", None, "bob")


def test_an_interval_never_ends_before_it_began() -> None:
    # given a version registered, then moved by an API replica whose clock runs behind
    log = Log()
    registered(log, M1, "churn", 1)
    entered = log.now
    log.model(M1, TransitionStage, version=1, to_stage=Stage.STAGING, at=entered - timedelta(minutes=5))  # fmt: skip

    rows = fold(stage_timeline.PROJECTION, log.events)

    development = next(i for i in rows.stages.values() if i.stage == "development")
    assert development.to_time == development.from_time == entered


def test_an_alias_move_closes_its_open_interval_from_an_earlier_batch() -> None:
    # given the open interval of an alias, as loaded for the batch that moves it
    log = Log()
    registered(log, M1, "churn", 2)
    log.model(M1, SetAlias, alias="champion", version=1)
    loaded = fold(stage_timeline.PROJECTION, log.events)
    loaded = stage_timeline.TimelineRows(aliases=loaded.aliases)

    # when the alias moves
    moved = log.model(M1, SetAlias, alias="champion", version=2)
    rows = fold(stage_timeline.PROJECTION, moved, loaded)

    # then the old interval ends where the new one starts
    old, new = sorted(rows.aliases.values(), key=lambda i: i.from_position)
    assert (old.version, old.to_position) == (1, moved[0].log_position)
    assert (new.version, new.from_position, new.to_position) == (2, moved[0].log_position, None)


# --- approvals -----------------------------------------------------------------------------


def test_an_approved_request_records_its_vote_and_its_execution() -> None:
    # given a gated model and a production request approved by bob
    log = Log()
    registered(log, M1, "churn", 1)
    policy = log.model(M1, SetModelPolicy, policy=GATED)
    log.model(M1, TransitionStage, version=1, to_stage=Stage.STAGING)
    log.model(M1, RequestPromotion, request_id="r1", version=1, target_stage=Stage.PRODUCTION, justification="ready")  # fmt: skip
    approved = log.model(M1, ApprovePromotion, request_id="r1", actor="bob", comment="ok")

    # when the approvals view folds the log
    rows = fold(approvals.PROJECTION, log.events)

    # then the request is executed with bob's approval, and his vote is recorded
    request = rows.requests[(M1, "r1")]
    assert (request.status, request.approvals, request.executed_approvers) == (
        "executed",
        ("bob",),
        ("bob",),
    )
    vote_position = approved[0].log_position
    assert rows.votes == {(M1, "r1", vote_position): ("bob", "approved", "ok", log.now)}
    assert rows.registrants == {(M1, 1): "alice"}
    assert rows.policies == {M1: (True, policy[0].log_position)}


def test_a_cleared_policy_is_a_row_to_delete() -> None:
    log = Log()
    registered(log, M1, "churn", 0)
    log.model(M1, SetModelPolicy, policy=GATED)
    log.model(M1, ClearModelPolicy)
    assert fold(approvals.PROJECTION, log.events).policies == {M1: None}


# --- deployments ---------------------------------------------------------------------------


def test_rolling_back_the_live_deployment_restores_the_one_it_replaced() -> None:
    # given d1 then d2 live at prod/eu, and d2 rolled back
    log = Log()
    registered(log, M1, "churn", 2)
    for deployment_id, version in (("d1", 1), ("d2", 2)):
        log.model(M1, StartDeployment, deployment_id=deployment_id, version=version, environment="prod", target="eu")  # fmt: skip
        log.model(M1, ReportDeploymentSucceeded, deployment_id=deployment_id, actor="deployer")
    rolled_back = log.model(M1, ReportDeploymentRolledBack, deployment_id="d2", reason="slow", actor="deployer")  # fmt: skip

    # when the deployments view folds the log
    rows = fold(deployments.PROJECTION, log.events)

    # then d1 serves again since the rollback, and d2 says why it stopped
    place = rows.places[(M1, "prod", "eu")]
    assert (place.live_deployment_id, place.since_position) == ("d1", rolled_back[0].log_position)
    d2 = rows.runs[(M1, "d2")]
    assert (d2.status, d2.reason, d2.replaced_deployment_id, d2.restored_deployment_id) == (
        "rolled_back",
        "slow",
        "d1",
        "d1",
    )
    assert rows.stages == {(M1, 1): ("development", ()), (M1, 2): ("development", ())}


# --- metric_history and audit_timeline ----------------------------------------------------


def test_the_metric_history_keeps_each_batch_as_logged() -> None:
    log = Log()
    registered(log, M1, "churn", 1)
    batch = log.metrics(M1, 1, auc=0.8)
    rows = fold(metric_history.PROJECTION, log.events)
    assert rows == {(M1, 1, batch[0].log_position): bytes(batch[0].envelope.data).decode()}


def test_the_audit_timeline_says_who_did_what_and_why() -> None:
    # given a model whose version 1 is moved to staging with a comment
    log = Log()
    registered(log, M1, "churn", 1)
    moved = log.model(M1, TransitionStage, version=1, to_stage=Stage.STAGING, comment="looks good", actor="bob")  # fmt: skip

    # when the audit timeline folds the log
    rows = fold(audit_timeline.PROJECTION, log.events)

    # then there is a row per event, and the move reads as a sentence with its reason
    assert sorted(rows) == [e.log_position for e in log.events]
    row = rows[moved[0].log_position]
    assert row[3:8] == (M1, 1, f"model:{M1}", StageTransitioned.event_type, "bob")
    assert row[11:] == ("bob moved v1 development → staging", "looks good")


@pytest.mark.parametrize("event", rich_history().events, ids=lambda e: e.event_type)
def test_every_event_of_a_rich_history_has_its_own_summary(event: LoggedEvent) -> None:
    summary = audit_timeline.evolve({}, [event])[event.log_position][11]
    assert not summary.startswith(f"{event.envelope.actor}: ")
