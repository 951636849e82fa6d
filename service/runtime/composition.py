"""Wiring: the objects one process shares, built once from settings and a pool. I/O: none
itself (it only constructs)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import asyncpg
from nats.aio.client import Client as NatsClient

from eventlog.positions import SealSignal
from eventlog.store import AppendResult, EventStore
from events.catalogue import CODEC
from service.api.services import Services
from service.api.telemetry import ApiMetrics
from service.artifacts.configure import blob_store_from
from service.commands.executor import CommandExecutor
from service.commands.registry import Registry
from service.commands.token_secrets import Pepper
from service.commands.tokens import TokenAuthenticator
from service.denials.flusher import DenialFlusher
from service.denials.recorder import DenialRecorder
from service.identity.flows import FlowConfig, ProviderFlows
from service.identity.jwks import JwksSource
from service.identity.oidc import OidcAuthenticator, OidcConfig
from service.identity.signin import SignIn
from service.identity.subjects import SubjectDirectory
from service.settings import Settings


def build_services(
    settings: Settings,
    pool: asyncpg.Pool,
    *,
    pepper: Pepper,
    nats: NatsClient | None = None,
    on_append: Callable[[AppendResult], None] | None = None,
    seal_signal: SealSignal | None = None,
) -> Services:
    """``pepper`` keys the digests of token secrets (``service.commands.token_secrets``);
    ``on_append`` runs after each local append commits (the runtime wakes the sealer);
    ``seal_signal`` is notified by a local sealer, so writes need not poll for their seal."""
    metrics = ApiMetrics(nats_stream=settings.nats_stream)
    store = EventStore(pool, CODEC, on_append=on_append)
    executor = CommandExecutor(
        store,
        on_conflict=metrics.conflict,
        subjects=SubjectDirectory(pool, erasable_comments=settings.erasable_comments),
    )
    registry = Registry(
        store, executor, seal_timeout=settings.read_wait_timeout, seal_signal=seal_signal
    )
    return Services(
        settings=settings,
        pool=pool,
        store=store,
        executor=executor,
        registry=registry,
        auth=_sign_in(settings, registry, TokenAuthenticator(store, executor, pepper)),
        metrics=metrics,
        pepper=pepper,
        blobs=blob_store_from(settings),
        denials=DenialFlusher(
            DenialRecorder(),
            pool,
            retention=timedelta(days=settings.denials_retention_days),
            now=registry.now,
        ),
        nats=nats,
    )


def _sign_in(settings: Settings, registry: Registry, tokens: TokenAuthenticator) -> SignIn:
    oidc = _oidc(settings, registry)
    flow_config = FlowConfig.from_settings(settings)
    flows = ProviderFlows(flow_config, oidc) if oidc and flow_config else None
    return SignIn(tokens, oidc, flows)


def _oidc(settings: Settings, registry: Registry) -> OidcAuthenticator | None:
    """Sign-in with the identity provider, when an issuer is configured (SettingsError when
    the configuration is incomplete or unsafe)."""
    config = OidcConfig.from_settings(settings)
    if config is None:
        return None
    keys = JwksSource(
        issuer=config.issuer,
        url=settings.oidc_jwks_url,
        file=settings.oidc_jwks_file,
        cache_seconds=settings.oidc_jwks_cache_seconds,
    )
    return OidcAuthenticator(config, keys, registry.now)
