"""The reference deployment agent deploys what enters production in its own environment
only, and never a version that merely left one of several environments."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec
import pytest

from events.catalogue import CODEC
from events.envelope import Envelope, encode_envelope
from events.model.events import StageTransitioned
from events.stages import Stage, TransitionKind
from service.consumers.deploy_agent import desire_of
from service.consumers.kit import Delivery
from service.publication.cloudevents import EventHeaders

MODEL_ID = "0b5e6c1f2d3a4b5c8d9e0f1a2b3c4d5e"


def delivered(event: StageTransitioned) -> Delivery:
    at = datetime(2026, 3, 3, 14, 3, tzinfo=UTC)
    envelope = Envelope(
        event_id=uuid.uuid4(),
        stream_id=f"model:{MODEL_ID}",
        stream_position=5,
        event_type=event.event_type,
        schema_version=event.schema_version,
        occurred_at=at,
        actor="alice",
        data=msgspec.Raw(CODEC.encode(event)),
    )
    headers = EventHeaders(
        id=envelope.event_id,
        source="modelreg",
        type=event.event_type,
        subject=envelope.stream_id,
        time=at,
        log_position=9,
        stream_position=5,
        schema_version=1,
        log_hash=b"\0" * 32,
    )
    return Delivery(
        event=headers,
        payload=encode_envelope(envelope),
        subject=f"modelreg.{event.event_type}",
        stream_seq=9,
        num_delivered=1,
        attempt=1,
    )


def moved(**fields: object) -> StageTransitioned:
    return StageTransitioned(
        version=8,
        from_stage=Stage.STAGING,
        to_stage=Stage.PRODUCTION,
        kind=TransitionKind.PROMOTION,
        comment="",
        **fields,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("event", "wanted"),
    [
        (moved(), True),  # production without environments: every agent
        (moved(environment="eu"), True),
        (moved(environment="us"), False),  # another environment's promotion
        (
            StageTransitioned(
                version=7,
                from_stage=Stage.PRODUCTION,
                to_stage=Stage.PRODUCTION,
                kind=TransitionKind.DEMOTION,
                comment="",
                from_environment="eu",
            ),
            False,  # v7 left eu and stays in us: nothing to deploy here
        ),
    ],
)
def test_the_eu_agent_deploys_what_enters_production_in_eu(
    event: StageTransitioned, wanted: bool
) -> None:
    # when the eu agent sees the event, then it deploys only what entered production in eu
    desire = desire_of(delivered(event), (), "eu")
    assert (desire is not None) == wanted
    if desire is not None:
        assert (desire.version, desire.stage) == (event.version, Stage.PRODUCTION)
