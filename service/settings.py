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

    # HTTP. Loopback unless an operator says otherwise.
    host: str = "127.0.0.1"
    port: Port = 8000
    role: Literal["all", "api", "worker"] = "all"
    bootstrap_token: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"

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

    # Background work.
    sealer_idle_interval: Seconds = 0.01
    worker_poll_interval: Seconds = 0.5
    read_wait_timeout: Seconds = 5.0

    @property
    def embedded_postgres(self) -> bool:
        return self.database_url is None

    @property
    def embedded_nats(self) -> bool:
        return self.nats_url is None


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
