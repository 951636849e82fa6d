"""MLflow's four stages and modelreg's, both ways. Pure.

    None        <->  development   (where every new version starts)
    Staging     <->  staging
    Production  <->  production
    Archived    <->  archived

MLflow matches stage names case-insensitively (``production`` and ``PRODUCTION`` are
Production) and answers them capitalised; an unknown name is a ``ValidationError``
(MLflow's ``INVALID_PARAMETER_VALUE``).

Custom stages (a policy's own names) have no MLflow counterpart: MLflow clients see them
verbatim in ``current_stage`` (``training``, ``canary``), and an MLflow stage transition
still names one of MLflow's four, which the model's policy must define (else 400).
"""

from __future__ import annotations

from events.errors import ValidationError
from events.stages import Stage, StageName

MLFLOW_STAGES: dict[str, Stage] = {
    "None": Stage.DEVELOPMENT,
    "Staging": Stage.STAGING,
    "Production": Stage.PRODUCTION,
    "Archived": Stage.ARCHIVED,
}
_BY_LOWER = {name.lower(): stage for name, stage in MLFLOW_STAGES.items()}
_NAMES: dict[str, str] = {str(stage): name for name, stage in MLFLOW_STAGES.items()}
# Stages whose other versions ``archive_existing_versions`` archives, as in MLflow.
ACTIVE_STAGES = frozenset({Stage.STAGING, Stage.PRODUCTION})


def stage_from_mlflow(name: str, field: str = "stage") -> Stage:
    stage = _BY_LOWER.get(name.strip().lower())
    if stage is None:
        raise ValidationError(
            field,
            "enum",
            f"invalid model version stage {name!r}: expected one of {', '.join(MLFLOW_STAGES)}",
        )
    return stage


def stage_to_mlflow(stage: StageName) -> str:
    """MLflow's name of one of the default stages; a custom stage's own name otherwise."""
    return _NAMES.get(stage, stage)
