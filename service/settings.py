"""Settings from ``MODELREG_*`` environment variables, parsed and validated with msgspec.

An invalid value fails start-up with one line naming the variable and what it expects.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import platformdirs

PREFIX = "MODELREG_"

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
Identifier = Annotated[str, msgspec.Meta(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]
StreamName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
SubjectPrefix = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")]


class SettingsError(ValueError):
    """A variable is missing or malformed; the message names it."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Where the data lives. No URL means: start an embedded server under data_dir.
    database_url: str | None = None
    nats_url: str | None = None
    data_dir: Path = Path(platformdirs.user_data_dir("modelreg"))
    db_schema: Identifier = "modelreg"
    db_app_role: Identifier = "modelreg_app"
    db_pool_size: Annotated[int, msgspec.Meta(ge=2, le=200)] = 10
    # Client port of the embedded NATS (only when nats_url is unset). 0: a free loopback port,
    # so a NATS already on 4222 never stops `serve`; the CLI finds it through the data dir.
    nats_port: Port = 0

    # Model files (docs/artifacts.md). No URL: a file store under data_dir/blobs; or
    # s3://bucket/prefix, credentials and endpoint from the usual AWS_* variables.
    artifacts_url: str | None = None
    artifacts_max_bytes: Annotated[int, msgspec.Meta(ge=1)] = 64 * 1024**3
    # Resumable uploads (service.artifacts.uploads): the bytes an S3-backed session keeps in
    # memory per part and loses at most when a connection drops (also how often the file
    # store fsyncs its committed offset), how long an idle session lives, and how long a
    # presigned S3 URL stays valid.
    uploads_part_size: Annotated[int, msgspec.Meta(ge=64 * 1024, le=1024**3)] = 8 * 1024**2
    uploads_ttl: Seconds = 24 * 3600.0
    uploads_link_ttl: Seconds = 900.0

    # HTTP. Loopback unless an operator says otherwise.
    host: str = "127.0.0.1"
    port: Port = 8000
    role: Literal["all", "api", "worker"] = "all"
    bootstrap_token: str | None = None
    # The key of token digests (service.commands.token_secrets); unset: the data dir's
    # token_pepper file, created on first start. Every replica needs the same one.
    token_pepper: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # HTTP resource limits (service/runtime/http_limits.py, docs/operations.md): the request
    # line and headers together, and their count (431 past either); seconds for a request's
    # head to arrive and between reads of its body (then the connection is closed); seconds
    # an idle kept-alive connection stays open; connections beyond which requests get 503
    # (except /health/*).
    http_max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024 * 1024)] = 64 * 1024
    http_max_headers: Annotated[int, msgspec.Meta(ge=8, le=1000)] = 100
    http_header_timeout: Seconds = 10.0
    http_body_timeout: Seconds = 30.0
    http_keep_alive_timeout: Seconds = 5.0
    http_max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000

    # Publication.
    nats_stream: StreamName = "MODELREG_EVENTS"
    nats_subject_prefix: SubjectPrefix = "modelreg.events"
    nats_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    nats_duplicate_window: Seconds = 6 * 3600.0
    event_source: str = "/modelreg"
    # Relay: events read per batch, publishes in flight, seconds to wait for a PubAck, and
    # the ceiling of its back-off while NATS is away.
    relay_batch_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    relay_window: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000
    relay_ack_timeout: Seconds = 5.0
    relay_backoff_max: Seconds = 5.0

    # HTTP webhooks (docs/webhooks.md): receivers on loopback/private addresses are refused
    # unless allowed; seconds a receiver has to answer; attempts (and seconds since the
    # first) before a delivery is dead-lettered; the back-off's first and longest wait;
    # days the delivery log keeps settled deliveries.
    webhooks_allow_private: bool = False
    webhooks_timeout: Seconds = 10.0
    webhooks_max_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 30
    webhooks_max_age: Seconds = 3 * 86400.0
    webhooks_backoff_initial: Seconds = 1.0
    webhooks_backoff_max: Seconds = 3600.0
    webhooks_retention_days: Annotated[float, msgspec.Meta(gt=0)] = 7.0

    # Refused requests (service.denials): how long the denials table keeps a row.
    denials_retention_days: Annotated[float, msgspec.Meta(gt=0)] = 90.0

    # Personal data (service.identity.subjects): with erasable comments, a comment's text
    # is kept beside the log and the event holds a salted sha256 reference to it, so
    # erasing its author erases the text too.
    erasable_comments: bool = False

    # Sign-in with the organisation's identity provider (service.identity): bearer JWTs
    # signed by the issuer's keys, found through its discovery document, a JWKS URL or a
    # JWKS file. Unset issuer: only modelreg's own tokens. OIDC_GROUP_ROLES maps groups to
    # roles and model scopes, first match wins: "ml-admins=admin; ml-team=contributor:churn*|fraud*".
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_jwks_file: Path | None = None
    oidc_algorithms: str = "RS256,ES256"
    oidc_leeway: Annotated[int, msgspec.Meta(ge=0, le=300)] = 60
    oidc_principal_claim: Annotated[str, msgspec.Meta(min_length=1)] = "preferred_username"
    oidc_groups_claim: Annotated[str, msgspec.Meta(min_length=1)] = "groups"
    oidc_group_roles: str = ""
    oidc_jwks_cache_seconds: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    # Sign-in through the provider (service.identity.flows): the UI's authorization code flow
    # with PKCE when a client id is set (its secret only for a confidential client; the
    # redirect URL derived from the request unless given), and the client id `modelreg login`
    # uses for the device flow (a public client; default the same id).
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_redirect_url: str | None = None
    oidc_cli_client_id: str | None = None
    oidc_provider_name: str | None = None  # on the login button; default the issuer's host
    oidc_scopes: str = "openid profile"

    # Signed checkpoints of the log (service.publication.checkpointer): the Ed25519 key file
    # (default <data_dir>/checkpoint-key.pem, created 0600; its public half beside it as
    # .pub), the directory the checkpoint files go to (default <data_dir>/checkpoints), the
    # cadence (every N sealed events, or every T seconds while the log grows), and the
    # JetStream stream and subject prefix they are published on.
    checkpoint_key: Path | None = None
    checkpoint_dir: Path | None = None
    checkpoint_every_events: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 1000
    checkpoint_interval: Seconds = 60.0
    checkpoint_stream: StreamName = "MODELREG_CHECKPOINTS"
    checkpoint_subject_prefix: SubjectPrefix = "modelreg.checkpoints"

    # Reads "as_of" a past position fold the log again: per token, at most this many at once
    # (burst), refilled at this many per second (service.api.rate_limit); over it: 429.
    expensive_read_rate: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    expensive_read_burst: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 10

    # Snapshots of the registry views (projections.snapshots): one every N sealed events,
    # so a registry-wide as_of read folds at most 2N events after the nearest one (a
    # snapshot copied from the live views stands a little past its multiple of N). Kept:
    # the newest SNAPSHOT_KEEP, and older ones, the last in each N * SNAPSHOT_THIN events.
    snapshot_every: Annotated[int, msgspec.Meta(ge=10, le=10_000_000)] = 500
    snapshot_keep: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 20
    snapshot_thin: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 4
    # ... and further apart as the registry grows: one event per this many rows of the last
    # snapshot (projections.snapshots.spacing), so taking them costs each event the same
    # whatever the registry's size (0: every N events, whatever the size).
    snapshot_rows_per_event: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 10

    # Background work. In role ``all`` the workers other than the sealer run in a child
    # process (service.runtime.worker_process), so the API's event loop serves requests
    # only and the workers use the second core; false keeps them all in one process. The
    # sealer stays beside the API: a write waits for its seal, and a local sealer hands
    # the position over with no round trip. ``sealer`` false: this process runs no sealer
    # (how the child is started; another process must run one).
    worker_process: bool = True
    sealer: bool = True
    sealer_idle_interval: Seconds = 0.01
    worker_poll_interval: Seconds = 0.5
    read_wait_timeout: Seconds = 5.0

    @property
    def embedded_postgres(self) -> bool:
        return self.database_url is None

    @property
    def embedded_nats(self) -> bool:
        return self.nats_url is None

    @property
    def checkpoint_key_path(self) -> Path:
        return self.checkpoint_key or self.data_dir / "checkpoint-key.pem"

    @property
    def checkpoint_directory(self) -> Path:
        return self.checkpoint_dir or self.data_dir / "checkpoints"


_FIELDS = set(Settings.__struct_fields__)
_PATH = re.compile(r"at `\$\.(\w+)`")


def _decode_path(kind: type, value: object) -> object:
    # msgspec has no native Path type; without this hook MODELREG_DATA_DIR is always refused.
    if kind is Path and isinstance(value, str | Path):
        return Path(value).expanduser()
    # msgspec's hook protocol for "not a type this hook converts": it then reports the
    # value as invalid for the field, naming it.
    raise NotImplementedError


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read settings from ``environ`` (default ``os.environ``); ``overrides`` win over it."""
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for key, value in env.items():
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX) :].lower()
        if name in _FIELDS and value != "":
            raw[name] = value
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(raw, Settings, strict=False, dec_hook=_decode_path)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        variable = f"{PREFIX}{match.group(1).upper()}" if match else "MODELREG_*"
        reason = _PATH.sub("", message).strip(" -")
        raise SettingsError(
            f"{variable}: {reason} (got {raw.get(match.group(1)) if match else '?'!r})"
        ) from None
