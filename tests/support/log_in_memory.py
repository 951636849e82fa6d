"""A sealed log built in memory through the real deciders, for folding views without a database.

    log = Log()
    log.model(MODEL_ID, RegisterModel, model_id=MODEL_ID, name="churn", owner="team-risk")
    log.model(MODEL_ID, RegisterVersion, content=content(1))
    log.metrics(MODEL_ID, 1, auc=0.9)
    rows = evolve(CatalogueRows(), log.events)

Each command is decided on the state its stream holds so far (a refused one raises the
``DomainError``), so the log holds only histories the service could have written. Every
command happens one second after the previous one unless ``at`` says otherwise; log
positions and sequence numbers count from 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec

from eventlog.log import LoggedEvent
from events.base import Command, Event
from events.catalogue import CODEC
from events.envelope import Envelope
from events.metrics import METRICS, LogMetrics, MetricInput, MetricsState
from events.model.commands import GovernedCommand
from events.model.decider import MODEL
from events.model.state import ModelState
from events.policy import GovernancePolicy
from events.registry_policy import REGISTRY_POLICY, RegistryPolicyState, SetRegistryPolicy
from events.streams import REGISTRY_POLICY_STREAM, metrics_stream, model_stream
from tests.support.policies import PERMISSIVE_POLICY
from tests.unit.domain_helpers import NOW


class Log:
    def __init__(self, start: datetime = NOW) -> None:
        self.events: list[LoggedEvent] = []
        self.now = start - timedelta(seconds=1)
        self._models: dict[str, ModelState] = {}
        self._metrics: dict[tuple[str, int], MetricsState] = {}
        # Views are tested under the permissive policy; governance tests set their own.
        self._registry = RegistryPolicyState(policy=PERMISSIVE_POLICY)
        self._stream_positions: dict[str, int] = {}

    def model(
        self,
        model_id: str,
        command: type[Command],
        /,
        *,
        actor: str = "alice",
        at: datetime | None = None,
        **fields: Any,
    ) -> list[LoggedEvent]:
        """Decide ``command`` on the model's stream and append what it decides."""
        self._tick(at)
        if issubclass(command, GovernedCommand):
            fields.setdefault("registry_policy", self._registry.policy)
        decided: Any = command(actor=actor, now=self.now, **fields)  # a ModelCommand
        state = self._models.get(model_id, MODEL.initial_state())
        events = MODEL.decide(decided, state)
        self._models[model_id] = MODEL.fold(events, state)
        return self._append(model_stream(model_id), events, actor)

    def metrics(
        self, model_id: str, version: int, *, step: int = 0, actor: str = "alice", **values: float
    ) -> list[LoggedEvent]:
        """Log one batch of metrics (every key at ``step``, timestamped now)."""
        self._tick(None)
        command = LogMetrics(
            actor=actor,
            now=self.now,
            model_id=model_id,
            version=version,
            metrics=tuple(MetricInput(key=k, value=v, step=step) for k, v in values.items()),
        )
        state = self._metrics.get((model_id, version), METRICS.initial_state())
        events = METRICS.decide(command, state)
        self._metrics[(model_id, version)] = METRICS.fold(events, state)
        return self._append(metrics_stream(model_id, version), events, actor)

    def registry_policy(self, policy: GovernancePolicy, *, actor: str = "root") -> None:
        self._tick(None)
        command = SetRegistryPolicy(actor=actor, now=self.now, policy=policy)
        events = REGISTRY_POLICY.decide(command, self._registry)
        self._registry = REGISTRY_POLICY.fold(events, self._registry)
        self._append(REGISTRY_POLICY_STREAM, events, actor)

    def state(self, model_id: str) -> ModelState:
        return self._models[model_id]

    def _tick(self, at: datetime | None) -> None:
        self.now = self.now + timedelta(seconds=1) if at is None else at

    def _append(self, stream_id: str, events: Sequence[Event], actor: str) -> list[LoggedEvent]:
        appended = []
        for event in events:
            position = len(self.events) + 1
            stream_position = self._stream_positions.get(stream_id, 0) + 1
            self._stream_positions[stream_id] = stream_position
            envelope = Envelope(
                event_id=UUID(int=position),
                stream_id=stream_id,
                stream_position=stream_position,
                event_type=event.event_type,
                schema_version=event.schema_version,
                occurred_at=self.now,
                actor=actor,
                data=msgspec.Raw(CODEC.encode(event)),
            )
            appended.append(
                LoggedEvent(
                    log_position=position, seq=position, sealed_at=self.now, envelope=envelope
                )
            )
        self.events.extend(appended)
        return appended
