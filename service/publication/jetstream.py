"""Provisioning of the JetStream stream the relay publishes to. I/O: NATS.

``ensure_stream`` is idempotent and safe to run from every process at every start:

- a missing stream is created: subjects ``<prefix>.>``, file storage, limits retention,
  the configured replicas (1 on a single server, 3 in a cluster), the configured duplicate
  window (hours, not the 2-minute default, so a relay that restarts after a crash finds its
  re-sent messages still de-duplicated), deny delete, deny purge, no rollup headers;
- an existing stream that differs is updated where that is safe — our subjects added (never
  others removed), the duplicate window and replica count set, delete/purge denied, rollups
  disallowed — and each change is reported;
- a difference that cannot be fixed in place (memory storage, interest or work-queue
  retention, a mirror or a sealed stream, an age limit shorter than the duplicate window,
  replicas the server cannot place) raises ``StreamConfigError`` naming the stream, the
  setting and the fix.

Operator-chosen limits (max age, bytes, messages) are left as they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo

from service.publication.cloudevents import stream_subjects
from service.settings import Settings


class StreamConfigError(RuntimeError):
    """The stream exists with settings that cannot be changed safely; says what to do."""


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """What the registry needs of its event stream."""

    name: str = "MODELREG_EVENTS"
    subject_prefix: str = "modelreg.events"
    replicas: int = 1
    duplicate_window: float = 6 * 3600.0
    description: str = "modelreg registry events (CloudEvents, binary mode)"

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamSpec:
        return cls(
            name=settings.nats_stream,
            subject_prefix=settings.nats_subject_prefix,
            replicas=settings.nats_replicas,
            duplicate_window=settings.nats_duplicate_window,
        )

    @property
    def subjects(self) -> list[str]:
        return stream_subjects(self.subject_prefix)

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            description=self.description,
            subjects=self.subjects,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window,
            deny_delete=True,
            deny_purge=True,
            allow_rollup_hdrs=False,
        )


@dataclass(frozen=True, slots=True)
class StreamReport:
    action: Literal["created", "updated", "unchanged"]
    info: StreamInfo
    changes: list[str] = field(default_factory=list)


async def ensure_stream(nc: NatsClient, spec: StreamSpec, *, timeout: float = 10.0) -> StreamReport:
    """Create the stream, or bring an existing one in line where safe; see the module doc.

    ``timeout`` bounds each JetStream API call; a replicated update can take seconds.
    """
    jsm = nc.jsm(timeout=timeout)
    try:
        current = await jsm.stream_info(spec.name)
    except nats.js.errors.NotFoundError:
        try:
            info = await jsm.add_stream(spec.config())
        except nats.js.errors.APIError as exc:
            # Created by another process a moment ago: take the update path against it.
            if exc.err_code != 10058:  # stream name already in use
                raise _refused(spec, "create", exc) from None
            current = await jsm.stream_info(spec.name)
        else:
            # Creating a stream that exists with the very same config also succeeds (two
            # processes starting at once); both then report "created".
            return StreamReport("created", info)

    desired, changes = _reconcile(spec, current.config)
    if not changes:
        return StreamReport("unchanged", current)
    try:
        info = await jsm.update_stream(desired)
    except nats.js.errors.APIError as exc:
        raise _refused(spec, f"update ({'; '.join(changes)})", exc) from None
    return StreamReport("updated", info, changes)


def _reconcile(spec: StreamSpec, existing: StreamConfig) -> tuple[StreamConfig, list[str]]:
    """The safe update of ``existing`` towards ``spec``, and what it changes; or raise."""
    name = spec.name
    if existing.mirror is not None:
        raise StreamConfigError(
            f"stream {name} is a mirror and cannot take publishes; delete it or set MODELREG_NATS_STREAM"
        )
    if existing.sealed:
        raise StreamConfigError(
            f"stream {name} is sealed and cannot take publishes; set MODELREG_NATS_STREAM to another stream"
        )
    if existing.storage not in (None, StorageType.FILE):
        raise StreamConfigError(
            f"stream {name} uses {_name(existing.storage)} storage; JetStream cannot change storage in place, "
            "so events would not survive a server restart. Recreate it with file storage"
        )
    if existing.retention not in (None, RetentionPolicy.LIMITS):
        raise StreamConfigError(
            f"stream {name} has {_name(existing.retention)} retention, which deletes events once consumed; "
            "NATS cannot change retention in place, so recreate it (limits retention)"
        )
    if existing.max_age and existing.max_age < spec.duplicate_window:
        raise StreamConfigError(
            f"stream {name} keeps messages {existing.max_age:.0f} s, less than the duplicate window "
            f"{spec.duplicate_window:.0f} s (MODELREG_NATS_DUPLICATE_WINDOW); raise its max age or lower the window"
        )

    desired = dataclasses.replace(existing)
    changes: list[str] = []
    subjects = list(existing.subjects or [])
    missing = [s for s in spec.subjects if s not in subjects]
    if missing:
        desired.subjects = subjects + missing
        changes.append(f"subjects + {', '.join(missing)}")
    if abs((existing.duplicate_window or 0) - spec.duplicate_window) > 1e-3:
        desired.duplicate_window = spec.duplicate_window
        changes.append(
            f"duplicate_window {existing.duplicate_window or 0:.0f}s -> {spec.duplicate_window:.0f}s"
        )
    if (existing.num_replicas or 1) != spec.replicas:
        desired.num_replicas = spec.replicas
        changes.append(f"replicas {existing.num_replicas or 1} -> {spec.replicas}")
    if not existing.deny_delete:
        desired.deny_delete = True
        changes.append("deny_delete -> true")
    if not existing.deny_purge:
        desired.deny_purge = True
        changes.append("deny_purge -> true")
    if existing.allow_rollup_hdrs:
        desired.allow_rollup_hdrs = False
        changes.append("allow_rollup_hdrs -> false")
    return desired, changes


def _name(value: object) -> str:
    return str(getattr(value, "value", value))


def _refused(spec: StreamSpec, what: str, exc: nats.js.errors.APIError) -> StreamConfigError:
    hint = ""
    if spec.replicas > 1 and "replicas" in str(exc.description or "").lower():
        hint = f"; MODELREG_NATS_REPLICAS={spec.replicas} needs a NATS cluster of at least {spec.replicas} JetStream servers"
    return StreamConfigError(
        f"NATS refused to {what} stream {spec.name}: {exc.description or exc}{hint}"
    )


async def delete_stream_if_exists(nc: NatsClient, name: str) -> bool:
    """For tests and operators: stream deletion is allowed even with deny_delete."""
    try:
        return await nc.jsm(timeout=10.0).delete_stream(name)
    except (nats.js.errors.NotFoundError, nats.errors.TimeoutError):
        return False
