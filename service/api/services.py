"""What the HTTP layer needs, built once per process by the runtime and shared by handlers."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
from nats.aio.client import Client as NatsClient

from eventlog.freshness import ViewsBell
from eventlog.store import EventStore
from service.api.telemetry import ApiMetrics
from service.artifacts.blobstore import BlobStore
from service.commands.executor import CommandExecutor
from service.commands.registry import Registry
from service.commands.token_secrets import Pepper
from service.denials.flusher import DenialFlusher
from service.identity.signin import SignIn
from service.settings import Settings


@dataclass(frozen=True, slots=True, eq=False)
class Services:
    settings: Settings
    pool: asyncpg.Pool
    store: EventStore
    executor: CommandExecutor
    registry: Registry
    auth: SignIn  # modelreg's tokens, and the identity provider's JWTs when configured
    metrics: ApiMetrics
    pepper: Pepper  # keys token digests (and what derives from it): never leaves the process
    blobs: BlobStore
    denials: DenialFlusher  # refusals, recorded for auditors (service.denials)
    nats: NatsClient | None = None
    # Rung when the views move (a LISTEN the runtime keeps): reads waiting for them look then.
    views_bell: ViewsBell = field(default_factory=ViewsBell)
