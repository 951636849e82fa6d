"""The state of one ``model:{model_id}`` stream: what its rules need to know. Pure.

State is a tree of frozen msgspec Structs, so the shell can snapshot it with msgspec and
fold only the events after the snapshot (``events.model.evolve`` folds them). It keeps the
indexes the rules need (current and previous production version, alias -> version,
version -> aliases, live deployment per environment and target) so no decision scans the
history.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

import msgspec

from events.base import UtcDateTime
from events.errors import NotFoundError
from events.policy import GovernancePolicy
from events.stages import INITIAL_STAGE, Stage, StageName
from events.version_content import VersionContent


class VersionState(msgspec.Struct, frozen=True, kw_only=True):
    number: int
    content: VersionContent
    content_digest: str
    registered_by: str
    stage: StageName = INITIAL_STAGE
    description: str = ""
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    deprecated: bool = False
    deprecation_reason: str = ""
    aliases: tuple[str, ...] = ()
    # The environments of ``stage`` it is in (sorted), for a stage with environments; unset
    # otherwise, so states folded before environments keep their encoded bytes.
    environments: tuple[str, ...] | msgspec.UnsetType = msgspec.UNSET

    def environment_names(self) -> tuple[str, ...]:
        return () if isinstance(self.environments, msgspec.UnsetType) else self.environments


class RequestStatus(enum.StrEnum):
    PENDING = "pending"
    EXECUTED = "executed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class RequestState(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    version: int
    target_stage: StageName | None
    alias: str | None
    justification: str
    requested_by: str
    expires_at: UtcDateTime
    rollback: bool = False
    environment: str | msgspec.UnsetType = msgspec.UNSET
    status: RequestStatus = RequestStatus.PENDING
    approvals: tuple[str, ...] = ()

    def environment_name(self) -> str | None:
        return None if isinstance(self.environment, msgspec.UnsetType) else self.environment


class DeploymentStatus(enum.StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class DeploymentState(msgspec.Struct, frozen=True, kw_only=True):
    deployment_id: str
    version: int
    environment: str
    target: str
    desired_stage: StageName | None = None
    desired_alias: str | None = None
    status: DeploymentStatus = DeploymentStatus.STARTED
    replaced_deployment_id: str | None = None


# Versions per block of the version table (below).
VERSION_BLOCK = 512


class VersionTable(msgspec.Struct, frozen=True):
    """A model's versions by number: a read-only mapping, changed by ``with_version``.

    State is folded into a new frozen value per event, so a plain ``dict`` of versions was
    copied whole (and the old copy freed) for each one: registering a version of a model
    with 25,000 versions spent a quarter of the API's time per MLflow create there, which
    ran at half its rate on a small model. The versions live in blocks of ``VERSION_BLOCK``
    consecutive numbers instead; a change copies its block and the index of blocks, about
    ``VERSION_BLOCK + n / VERSION_BLOCK`` entries, not ``n``. (A persistent map such as
    ``immutables.Map`` would be O(log n), but ``events/`` imports only the standard
    library and msgspec.) Iteration is in registration order, ascending numbers, as a
    ``dict`` filled in that order iterates.
    """

    blocks: dict[int, dict[int, VersionState]] = msgspec.field(default_factory=dict)

    def with_version(self, version: VersionState) -> VersionTable:
        """The table with ``version`` added, or in place of the one with its number."""
        key = version.number // VERSION_BLOCK
        block = self.blocks.get(key, {})
        return VersionTable(blocks={**self.blocks, key: {**block, version.number: version}})

    def get(self, number: int) -> VersionState | None:
        block = self.blocks.get(number // VERSION_BLOCK)
        return None if block is None else block.get(number)

    def __getitem__(self, number: int) -> VersionState:
        found = self.get(number)
        if found is None:
            raise KeyError(number)
        return found

    def __contains__(self, number: object) -> bool:
        return isinstance(number, int) and self.get(number) is not None

    def __len__(self) -> int:
        return sum(map(len, self.blocks.values()))

    def __iter__(self) -> Iterator[int]:
        for block in self.blocks.values():
            yield from block

    def values(self) -> Iterator[VersionState]:
        for block in self.blocks.values():
            yield from block.values()

    def items(self) -> Iterator[tuple[int, VersionState]]:
        for block in self.blocks.values():
            yield from block.items()


class ModelState(msgspec.Struct, frozen=True, kw_only=True):
    """``registered`` is False for an empty stream; ``policy`` None means the registry default.

    ``last_production`` is the version that most recently entered production and
    ``previous_production`` the one that was there before it: together they answer
    "rollback to what?" in O(1).
    """

    model_id: str = ""
    name: str = ""
    registered: bool = False
    archived: bool = False
    deleted: bool = False
    description: str = ""
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    owner: str = ""
    policy: GovernancePolicy | None = None
    versions: VersionTable = msgspec.field(default_factory=VersionTable)
    last_version: int = 0
    production: int | None = None
    last_production: int | None = None
    previous_production: int | None = None
    aliases: dict[str, int] = msgspec.field(default_factory=dict)
    requests: dict[str, RequestState] = msgspec.field(default_factory=dict)
    deployments: dict[str, DeploymentState] = msgspec.field(default_factory=dict)
    live: dict[str, dict[str, str]] = msgspec.field(default_factory=dict)

    def effective_policy(self, registry_policy: GovernancePolicy) -> GovernancePolicy:
        return self.policy if self.policy is not None else registry_policy

    def version(self, number: int) -> VersionState:
        found = self.versions.get(number)
        if found is None:
            raise NotFoundError(f"model {self.name!r} has no version {number}", version=number)
        return found

    def in_stage(self, stage: StageName, environment: str | None = None) -> tuple[int, ...]:
        """The versions in ``stage`` (in ``environment`` if named), oldest first (an
        exclusive stage holds at most one per environment)."""
        return tuple(
            sorted(
                n
                for n, v in self.versions.items()
                if v.stage == stage
                and (environment is None or environment in v.environment_names())
            )
        )

    def champion(self, environment: str | None) -> int | None:
        """The production version metric gates compare against: in ``environment`` when
        the move names one and production is per environment."""
        if environment is not None:
            holders = self.in_stage(Stage.PRODUCTION, environment)
            if holders or any(
                self.version(n).environment_names() for n in self.in_stage(Stage.PRODUCTION)
            ):
                return holders[-1] if holders else None
        return self.production

    def rollback_target(self) -> int | None:
        """The version that was in production before the current one (or the last one, if none is)."""
        return self.last_production if self.production is None else self.previous_production


def initial_state() -> ModelState:
    return ModelState()
