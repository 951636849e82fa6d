"""One representative instance of every event type, with every field set where it can be.

Golden files under ``golden/`` hold their canonical encoding. When you add an event type,
add its sample here and write its file with ``MODELREG_WRITE_GOLDEN=1 pytest tests/unit``
(which writes missing files only). Never edit an existing golden file: a stored event's
bytes are permanent, so a shape change needs a new schema version and an upcaster.
"""

from __future__ import annotations

from events.access import Permission, Role, TokenIssued, TokenRevoked
from events.access_grants import (
    GrantGiven,
    GrantWithdrawn,
    RoleDefined,
    RoleRemoved,
    ServiceAccountCreated,
    ServiceAccountDisabled,
    SubjectKind,
)
from events.artifacts import BlobStored
from events.base import Event
from events.blob_collection import BlobDeleted
from events.metrics import MetricPoint, MetricsLogged
from events.model.events import (
    AliasRemovalCause,
    AliasRemoved,
    AliasSet,
    DeploymentFailed,
    DeploymentRolledBack,
    DeploymentStarted,
    DeploymentSucceeded,
    ModelArchived,
    ModelDeleted,
    ModelDescriptionUpdated,
    ModelPolicyCleared,
    ModelPolicySet,
    ModelRegistered,
    ModelRenamed,
    ModelRestored,
    ModelTagsRemoved,
    ModelTagsSet,
    PromotionApproved,
    PromotionCancelled,
    PromotionExecuted,
    PromotionExpired,
    PromotionRejected,
    PromotionRequested,
    StageTransitioned,
    VersionDeprecated,
    VersionDescriptionUpdated,
    VersionRegistered,
    VersionTagsRemoved,
    VersionTagsSet,
)
from events.policy import (
    AliasRule,
    GateOp,
    GateResult,
    GovernancePolicy,
    MetricGate,
    TransitionRule,
)
from events.registry_policy import RegistryPolicySet
from events.stages import Stage, TransitionKind
from events.subjects import SubjectErased
from events.version_content import (
    ArtifactEntry,
    CodeReference,
    DatasetReference,
    DatasetRole,
    Dependencies,
    FileReference,
    ModelSignature,
    RunReference,
    VersionContent,
    content_digest,
)
from events.webhooks import PayloadFormat, WebhookCreated, WebhookDeleted
from tests.unit.domain_helpers import MODEL_ID, NOW, later

D, S, P, A = Stage.DEVELOPMENT, Stage.STAGING, Stage.PRODUCTION, Stage.ARCHIVED
GATE = MetricGate(
    metric="auc", op=GateOp.GE, dataset="holdout", threshold=0.9, compare_to_production=True
)
POLICY = GovernancePolicy(
    transitions=(
        TransitionRule(from_stage=D, to_stage=S),
        TransitionRule(from_stage=S, to_stage=P, approvals=2, gates=(GATE,)),
        TransitionRule(from_stage=P, to_stage=A, approvals=1),
    ),
    protected_aliases=(AliasRule(alias="champion", approvals=1, gates=(GATE,)),),
    separation_of_duties=True,
    demote_production_to=S,
    request_ttl_seconds=86400,
    rollback_approvals=1,
)


# Spelled out here, not shared with other tests, so no helper change can move a golden file.
BODY = VersionContent(
    artifacts=(
        ArtifactEntry(
            path="model.pkl", uri="s3://models/churn/7/model.pkl", sha256="ab" * 32, size=1031
        ),
        ArtifactEntry(
            path="MLmodel", uri="s3://models/churn/7/MLmodel", sha256="cd" * 32, size=310
        ),
    ),
    code=CodeReference(
        repository="https://github.com/acme/churn", commit="1a2b3c4d5e6f", path="train.py"
    ),
    dependencies=Dependencies(
        python_version="3.11.7",
        lock_file=FileReference(uri="s3://models/churn/uv.lock", sha256="ef" * 32),
    ),
    parameters={
        "learning_rate": 0.01,
        "max_depth": 6,
        "objective": "binary",
        "early_stopping": True,
    },
    datasets=(
        DatasetReference(
            name="churn-2024",
            uri="s3://data/churn/2024",
            digest="sha256:" + "12" * 32,
            role=DatasetRole.TRAIN,
        ),
        DatasetReference(
            name="holdout",
            uri="s3://data/churn/holdout",
            digest="sha256:" + "34" * 32,
            role=DatasetRole.TEST,
        ),
    ),
    run=RunReference(run_id="run-7", url="https://mlflow.acme.io/#/runs/run-7", tracker="mlflow"),
    signature=ModelSignature(
        inputs='[{"name": "tenure", "type": "long"}]', outputs='[{"type": "double"}]'
    ),
)


def samples() -> dict[str, Event]:
    body = BODY
    events: list[Event] = [
        ModelRegistered(
            model_id=MODEL_ID,
            name="churn",
            description="Predicts churn",
            tags={"team": "risk"},
            owner="team-risk",
        ),
        ModelDescriptionUpdated(description="Predicts churn for EU customers"),
        ModelTagsSet(tags={"tier": "1", "pii": "no"}),
        ModelTagsRemoved(keys=("pii",)),
        ModelRenamed(old_name="churn", new_name="churn-eu"),
        ModelArchived(reason="replaced by churn-v2"),
        ModelRestored(reason="still used by billing"),
        ModelDeleted(name="churn-test", reason="created by mistake"),
        ModelPolicySet(policy=POLICY, comment="four eyes for production"),
        ModelPolicyCleared(comment="back to the registry default"),
        VersionRegistered(
            version=3,
            content=body,
            content_digest=content_digest(body),
            registered_by="alice",
            description="xgboost baseline",
            tags={"algo": "xgb"},
        ),
        VersionDescriptionUpdated(version=3, description="xgboost, tuned"),
        VersionTagsSet(version=3, tags={"validated": "yes"}),
        VersionTagsRemoved(version=3, keys=("validated",)),
        VersionDeprecated(version=2, reason="trained on leaked labels"),
        StageTransitioned(
            version=3,
            from_stage=S,
            to_stage=P,
            kind=TransitionKind.PROMOTION,
            comment="ship it",
            request_id="r-1",
        ),
        AliasSet(
            alias="champion", version=3, previous_version=2, comment="ship it", request_id="r-1"
        ),
        AliasRemoved(
            alias="stable",
            version=2,
            cause=AliasRemovalCause.VERSION_ARCHIVED,
            comment="demoted",
            request_id="r-1",
        ),
        PromotionRequested(
            request_id="r-1",
            version=3,
            target_stage=P,
            alias="champion",
            justification="auc +2pt",
            requested_by="bob",
            expires_at=later(86400),
            approvals_required=2,
            rollback=False,
        ),
        PromotionApproved(request_id="r-1", approved_by="carol", comment="lgtm"),
        PromotionRejected(request_id="r-2", rejected_by="carol", comment="drift on holdout"),
        PromotionCancelled(request_id="r-3", cancelled_by="bob", comment="superseded"),
        PromotionExpired(request_id="r-4"),
        PromotionExecuted(
            request_id="r-1",
            version=3,
            from_stage=S,
            target_stage=P,
            alias="champion",
            approved_by=("carol", "dave"),
            approvals_required=2,
            rules=("transition:staging->production", "protected_alias:champion"),
            gate_results=(GateResult(gate=GATE, value=0.93, production_value=0.91, passed=True),),
        ),
        DeploymentStarted(
            deployment_id="d-1",
            version=3,
            environment="prod",
            target="k8s/churn-api",
            desired_stage=P,
            desired_alias=None,
            comment="argo sync",
        ),
        DeploymentSucceeded(deployment_id="d-1", replaced_deployment_id="d-0", comment="healthy"),
        DeploymentFailed(deployment_id="d-2", reason="image pull backoff"),
        DeploymentRolledBack(deployment_id="d-1", restored_deployment_id="d-0", reason="5xx spike"),
        MetricsLogged(
            model_id=MODEL_ID,
            version=3,
            metrics=(
                MetricPoint(key="auc", value=0.93, step=10, timestamp=NOW, dataset="holdout"),
                MetricPoint(key="loss", value=0.25, step=10, timestamp=later(1.5)),
            ),
        ),
        RegistryPolicySet(policy=POLICY, comment="registry default: four eyes"),
        TokenIssued(
            token_id="t-1",
            principal="ci@acme.io",
            roles=(Role.CONTRIBUTOR, Role.APPROVER),
            scopes=("churn*",),
            expires_at=later(3600),
            description="CI pipeline",
        ),
        TokenRevoked(token_id="t-1", reason="rotated"),
        RoleDefined(
            role="fraud-approver",
            permissions=(Permission.APPROVE, Permission.READ),
            description="approves fraud models",
        ),
        RoleRemoved(role="fraud-approver", reason="team merged"),
        GrantGiven(
            grant_id="g-1",
            subject_kind=SubjectKind.GROUP,
            subject="risk-team",
            role="approver",
            pattern="fraud*",
            given_by="admin",
            reason="on-call rota",
        ),
        GrantWithdrawn(grant_id="g-1", withdrawn_by="admin", reason="rota ended"),
        ServiceAccountCreated(
            name="ci-bot",
            roles=(Role.CONTRIBUTOR,),
            scopes=("churn*",),
            max_lifetime_seconds=2592000,
            description="CI pipeline",
        ),
        ServiceAccountDisabled(name="ci-bot", reason="pipeline retired"),
        BlobStored(model_id=MODEL_ID, sha256="3a" * 32, size=482113),
        BlobDeleted(sha256="3b" * 32, size=4096, age_seconds=864000, stored_for=(MODEL_ID,)),
        WebhookCreated(
            subscription_id="w-1",
            url="https://ci.acme.io/hooks/modelreg",
            event_types=("model.stage_transitioned", "model.promotion_executed"),
            models=("churn*",),
            payload_format=PayloadFormat.MLFLOW,
            description="deploy on promotion",
        ),
        WebhookDeleted(subscription_id="w-1", reason="pipeline retired"),
        SubjectErased(subject_id="subj_" + "a2" * 13),
    ]
    return {event.event_type: event for event in events}
