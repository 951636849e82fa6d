"""The reference deployment agent: promotions in, KServe manifests out, outcomes reported back.

A small, readable example of a deployment system built on the consumer kit
(``service.consumers.kit``) and the Python client (``service.client``). I/O: NATS, the registry's
HTTP API, files in one directory.

What it reacts to (one durable consumer, events in log order):

- ``model.stage_transitioned`` with ``to_stage = production``: the new production version
  (with production per environment, only a version entering production in the agent's own
  ``environment``);
- ``model.alias_set`` for the aliases it was told to follow (``aliases``; a protected alias
  such as ``champion`` is the usual choice): the version the alias now points at.

For each, it reads the version through the API, renders a KServe ``InferenceService``
(``serving.kserve.io/v1beta1``) for it into ``<out>/<name>.yaml`` (written to a temporary
file and renamed, so a reader such as a GitOps sync never sees half a file), and records
the deployment in the registry: ``start_deployment`` before writing, then
``report_deployment`` ``succeeded``, or ``failed`` with the reason when the manifest cannot
be rendered or written. The registry then compares desired (the production version, or
the alias's target) against actual (the live deployment) per environment and target:
``GET /api/v1/models/{name}/deployments``.

Idempotency, in two layers:

1. the consumer kit de-duplicates on ``ce-id`` in a ``FileDedup`` state file (recorded
   after the handler succeeded, fsynced before the ack), so a redelivered or re-sent event
   is skipped;
2. should that record be lost (the state file deleted, a crash between the report and the
   record), the deployment id is derived from the event id and the place, so the registry
   refuses a second ``start`` for the same event (409) and the agent looks up how the first
   one ended instead of deploying again; a manifest whose bytes would not change is not
   rewritten.

It acts on the desired state, not on history: an event whose version no longer holds the
stage or alias (a newer promotion came after it, e.g. while the agent was down) is skipped,
since the newer event follows and deploys. Events of one model arrive in the order they
happened, so the manifest always ends at the latest promotion.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import msgspec
from nats.aio.client import Client as NatsClient

from events.catalogue import CODEC
from events.model.events import AliasSet, StageTransitioned
from events.names import validate_alias, validate_place
from events.stages import Stage
from events.streams import model_id_or_none
from service.client import AsyncClient, Conflict, NotFound
from service.client.models import ArtifactEntry, DeploymentRun, VersionRow
from service.consumers.kit import (
    ConsumerStats,
    DedupStore,
    Delivery,
    EventConsumer,
    Subscription,
)

log = logging.getLogger(__name__)

STAGE_EVENT = StageTransitioned.event_type
ALIAS_EVENT = AliasSet.event_type
# Schemes KServe's storage initializer can pull from inside a cluster. ``file:`` (what the
# client records for artifacts registered from a local directory) points at the disk of
# the machine that registered the version, which no pod can read.
CLUSTER_SCHEMES = frozenset({"s3", "gs", "pvc", "hdfs", "webhdfs", "https", "http", "oci", "hf"})
# An InferenceService name is a DNS-1035 label; KServe derives longer names from it
# (``<name>-predictor-...``), which must stay within 63 characters, hence the lower bound.
NAME_MAX = 45
MANAGED_BY = "modelreg-deploy-agent"
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
# Characters a YAML double-quoted scalar must not carry raw: non-printables, and what YAML
# 1.1 reads as line breaks (NEL, LS, PS), which it would fold away. JSON escapes C0 itself.
_NON_PRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")


class RenderError(Exception):
    """The version cannot be turned into a manifest; the message is the recorded reason."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Where manifests go and what the deployments are recorded as.

    ``target`` names the place for the production stage; a followed alias deploys to
    ``<target>/<alias>``, so desired and actual are compared per alias. The storage URI
    comes from the version's artifacts (``storage_uri_from="artifacts"``: the prefix all
    artifact URIs share) or from a version tag (``"tag:<key>"``). The model format is the
    version's ``model_format`` tag, else ``model_format``.

    A version whose files the registry stores is fetched from the registry itself, so a
    deployment needs nothing else: ``registry_url`` is the registry's address as the
    cluster reaches it (its download routes: one file, or the whole version as a zip).
    ``storage_uri_from="blobs"`` points a single-file version at its blob in the S3 store
    (``blobs_url``, the store's ``s3://bucket/prefix``) instead, for clusters that read
    the bucket directly.
    """

    out: Path
    environment: str = "prod"
    target: str = "k8s/serving"
    aliases: frozenset[str] = frozenset()
    namespace: str | None = None
    model_format: str | None = None
    storage_uri_from: str = "artifacts"
    registry_url: str = ""
    blobs_url: str = ""
    # How long to wait for the registry's views to show a deployment it refused to start
    # twice (the earlier start may be only milliseconds old).
    visibility_timeout: float = 10.0

    def __post_init__(self) -> None:
        # Refused here, at start-up, rather than by the registry on every event.
        validate_place(self.environment, "environment")
        validate_place(self.target, "target")
        for alias in self.aliases:
            validate_alias(alias)
        if self.storage_uri_from not in ("artifacts", "blobs") and not (
            self.storage_uri_from.startswith("tag:") and len(self.storage_uri_from) > 4
        ):
            raise ValueError(
                "storage_uri_from is 'artifacts', 'blobs' or 'tag:<key>',"
                f" not {self.storage_uri_from!r}"
            )
        if self.storage_uri_from == "blobs" and not self.blobs_url.startswith("s3://"):
            raise ValueError("storage_uri_from 'blobs' needs the S3 store's s3://bucket/prefix")


@dataclass(frozen=True, slots=True)
class Desire:
    """What one event asks for: ``version`` of the model should serve, following
    ``stage`` (production) or ``alias``."""

    model_id: str
    version: int
    stage: Stage | None = None
    alias: str | None = None

    @property
    def follows(self) -> str:
        return f"alias:{self.alias}" if self.alias else f"stage:{self.stage}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the agent did with one event (for logs, the CLI and tests)."""

    status: Literal["succeeded", "failed", "skipped", "recorded"]
    event_id: uuid.UUID
    model: str
    version: int
    follows: str
    detail: str = ""
    deployment_id: str | None = None
    path: Path | None = None

    def line(self) -> str:
        where = f" -> {self.path}" if self.path else ""
        said = f": {self.detail}" if self.detail else ""
        return f"{self.status:<9} {self.model} v{self.version} ({self.follows}){where}{said}"


def desire_of(
    delivery: Delivery, aliases: Collection[str], environment: str | None = None
) -> Desire | None:
    """The deployment an event asks for, or None when it asks for none (another stage,
    an alias not followed, production in another environment than ``environment``, or a
    version leaving one environment of production)."""
    model_id = model_id_or_none(delivery.event.subject)
    if model_id is None:
        return None
    event = CODEC.decode(delivery.envelope)  # typed, upcast from older schema versions
    if isinstance(event, StageTransitioned) and event.to_stage == Stage.PRODUCTION:
        entered = event.entered_environment()
        if entered is None and event.from_stage == event.to_stage:
            return None  # it left one environment; whoever entered it comes in its own event
        if entered is not None and entered != environment:
            return None
        return Desire(model_id=model_id, version=event.version, stage=Stage.PRODUCTION)
    if isinstance(event, AliasSet) and event.alias in aliases:
        return Desire(model_id=model_id, version=event.version, alias=event.alias)
    return None


def deployment_id_for(event_id: uuid.UUID, environment: str, target: str) -> str:
    """One deployment id per (event, place): a replay of the event names the same deployment,
    which the registry will not start twice."""
    return "da-" + uuid.uuid5(event_id, f"{environment}\x00{target}").hex


def resource_name(model: str, environment: str, alias: str | None = None) -> str:
    """A DNS-1035 name for the InferenceService: ``<model>[-<alias>]-<environment>``.

    Kept readable when the parts are already lower-case letters, digits and dashes; when
    anything had to change (upper case, ``_``, ``.``, length), a hash of the exact parts is
    appended, so two models whose names differ only in such characters never share a name.
    """
    raw = "-".join(part for part in (model, alias, environment) if part)
    slug = re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")
    if not slug[:1].isalpha():
        slug = "m-" + slug
    if slug == raw and len(slug) <= NAME_MAX:
        return slug
    digest = hashlib.sha256(f"{model}\x00{alias or ''}\x00{environment}".encode()).hexdigest()[:8]
    return f"{slug[: NAME_MAX - 9].rstrip('-')}-{digest}"


def storage_uri(
    row: VersionRow, rule: str = "artifacts", *, registry_url: str = "", blobs_url: str = ""
) -> str:
    """Where KServe pulls the model from; RenderError says why there is no usable one."""
    stored = registry_uri(row, rule, registry_url=registry_url, blobs_url=blobs_url)
    if stored is not None:
        return stored
    if rule.startswith("tag:"):
        key = rule[4:]
        found = row.tags.get(key)
        if not found:
            raise RenderError(f"version {row.version} has no tag {key!r} holding its storage URI")
        uri = found
    else:
        if row.content is None or not row.content.artifacts:
            raise RenderError(f"version {row.version} records no artifacts")
        root = package_root(row.content.artifacts)
        if root is None:
            raise RenderError(
                f"the artifacts of version {row.version} are not under one storage prefix; "
                "tag the version with its storage URI and use --storage-uri-from tag:<key>"
            )
        uri = root
    scheme = urlsplit(uri).scheme.lower()
    if scheme not in CLUSTER_SCHEMES:
        raise RenderError(
            f"version {row.version} is stored at {uri}, which a cluster cannot pull from "
            f"(scheme {scheme or 'none'!r}; KServe reads {', '.join(sorted(CLUSTER_SCHEMES))}); "
            "register it with artifacts_uri=s3://... or tag it and use --storage-uri-from tag:<key>"
        )
    return uri


def registry_uri(row: VersionRow, rule: str, *, registry_url: str, blobs_url: str) -> str | None:
    """For a version whose files the registry stores (none external): the registry's
    download URL, or with rule ``blobs`` the single file's blob in the S3 store; None for
    a version with external files (those say themselves where they are)."""
    artifacts = row.content.artifacts if row.content is not None else ()
    if rule.startswith("tag:") or not artifacts or any(e.external or e.uri for e in artifacts):
        return None
    if rule == "blobs":
        if len(artifacts) != 1:
            raise RenderError(
                f"version {row.version} has {len(artifacts)} files: a blob holds one;"
                " fetch it from the registry (--storage-uri-from artifacts)"
            )
        sha256 = artifacts[0].sha256
        return f"{blobs_url.rstrip('/')}/blobs/sha256/{sha256[:2]}/{sha256}"
    if not registry_url.startswith(("http://", "https://")):
        raise RenderError(
            f"version {row.version} is stored in the registry; the agent needs the registry's"
            " URL as the cluster reaches it (--registry-url)"
        )
    base = f"{registry_url.rstrip('/')}/api/v1/models/{quote(row.model_name, safe='')}"
    base += f"/versions/{row.version}"
    if len(artifacts) == 1:
        return f"{base}/files/{quote(artifacts[0].path, safe='/')}"
    # KServe unpacks an http(s) download by the type the URL's name (or, when the path has
    # none, its query) suggests: the trailing name tells it this is a zip.
    return f"{base}/archive?format=zip&filename={quote(row.model_name, safe='')}-{row.version}.zip"


def package_root(artifacts: Sequence[ArtifactEntry]) -> str | None:
    """The URI every artifact sits under as ``<root>/<path>`` (how the client records an
    ``artifacts_uri``); a lone artifact stored elsewhere is its own URI; else None."""
    roots = set()
    for entry in artifacts:
        suffix = "/" + quote(entry.path, safe="/")
        for candidate in (suffix, "/" + entry.path):
            if entry.uri.endswith(candidate) and len(entry.uri) > len(candidate):
                roots.add(entry.uri[: -len(candidate)])
                break
        else:
            roots.add("")
    if len(roots) == 1 and "" not in roots:
        return roots.pop()
    if len(artifacts) == 1:
        return artifacts[0].uri
    return None


def render_manifest(
    config: AgentConfig,
    row: VersionRow,
    desire: Desire,
    *,
    name: str,
    deployment_id: str,
    event_id: uuid.UUID,
    log_position: int,
) -> str:
    """The InferenceService YAML for ``row``. Deterministic: the same event renders the
    same bytes, which is what lets a replay leave the file alone."""
    model_format = row.tags.get("model_format") or config.model_format
    if not model_format:
        raise RenderError(
            f"version {row.version} has no model_format tag and the agent has no --model-format default"
        )
    uri = storage_uri(
        row,
        config.storage_uri_from,
        registry_url=config.registry_url,
        blobs_url=config.blobs_url,
    )
    metadata: dict[str, object] = {"name": name}
    if config.namespace:
        metadata["namespace"] = config.namespace
    labels = {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "modelreg.io/model-id": row.model_id,
        "modelreg.io/version": str(row.version),
    }
    # Label values are restricted (63 characters, no ':' or '/'); ids that do not fit stay
    # in the annotations only.
    metadata["labels"] = {
        k: v for k, v in labels.items() if _LABEL_VALUE.fullmatch(v) and len(v) <= 63
    }
    metadata["annotations"] = {
        "modelreg.io/model": row.model_name,
        "modelreg.io/model-id": row.model_id,
        "modelreg.io/version": str(row.version),
        "modelreg.io/follows": desire.follows,
        "modelreg.io/content-digest": row.content_digest,
        "modelreg.io/environment": config.environment,
        "modelreg.io/target": place_target(config, desire),
        "modelreg.io/deployment-id": deployment_id,
        "modelreg.io/event-id": str(event_id),
        "modelreg.io/log-position": str(log_position),
    }
    document = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {
            "predictor": {"model": {"modelFormat": {"name": model_format}, "storageUri": uri}}
        },
    }
    header = (
        f"# Rendered by modelreg deploy-agent for {row.model_name} v{row.version} ({desire.follows}) "
        f"at log position {log_position}.\n# Replaced by the next promotion; do not edit.\n"
    )
    return header + "".join(_yaml(document, 0))


def place_target(config: AgentConfig, desire: Desire) -> str:
    return f"{config.target}/{desire.alias}" if desire.alias else config.target


def _yaml(value: object, indent: int) -> Iterable[str]:
    """Block-style YAML for nested mappings of strings. Every value is a double-quoted
    scalar (JSON string syntax, which YAML shares), so no name or URI can change the
    document's structure or be read as a number or boolean; keys are our own constants."""
    assert isinstance(value, dict)
    pad = " " * indent
    for key, item in value.items():
        if isinstance(item, dict):
            yield f"{pad}{key}:\n"
            yield from _yaml(item, indent + 2)
        else:
            yield f"{pad}{key}: {_quoted(str(item))}\n"


def _quoted(text: str) -> str:
    quoted = json.dumps(text, ensure_ascii=False)
    return _NON_PRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)


def write_atomically(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` through a temporary file and a rename, fsynced, so the
    file is always whole; returns False (and touches nothing) when it holds it already."""
    data = text.encode("utf-8")
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
    return True


def _claimed_by(path: Path) -> str | None:
    """Who an existing file at ``path`` belongs to: the place (model id, environment,
    target) it was rendered for, or a note that this agent did not write it; None when
    there is no file. Two places whose names collide must not overwrite each other."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    found = {
        key: json.loads(value)
        for key, value in re.findall(
            r'^\s+modelreg\.io/(model-id|environment|target): (".*")$', text, re.MULTILINE
        )
    }
    if len(found) < 3:
        return "a file the deploy agent did not write"
    return " ".join(found[k] for k in ("model-id", "environment", "target"))


class DeployAgent:
    """The consumer kit's handler: ``EventConsumer(nc, agent.subscription(), dedup, agent.handle)``."""

    def __init__(
        self,
        client: AsyncClient,
        config: AgentConfig,
        *,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.on_outcome = on_outcome
        self.outcomes: list[Outcome] = []
        self._names: dict[str, str] = {}

    def subscription(
        self,
        name: str,
        *,
        stream: str = "MODELREG_EVENTS",
        subject_prefix: str = "modelreg.events",
        models: Collection[str] = (),
        **options: Any,
    ) -> Subscription:
        """The durable consumer this agent needs: only the two event types it acts on,
        filtered by the server. ``models`` (ids) narrows it to some models."""
        types = [STAGE_EVENT, ALIAS_EVENT] if self.config.aliases else [STAGE_EVENT]
        # A registry outage should delay a deployment, not dead-letter it: retry for minutes.
        subscription = Subscription(
            name=name,
            stream=stream,
            subject_prefix=subject_prefix,
            event_types=types,
            models=models,
            max_attempts=30,
            retry_backoff=0.5,
            retry_backoff_max=10.0,
        )
        return dataclasses.replace(subscription, **options) if options else subscription

    async def handle(self, delivery: Delivery) -> None:
        """Deploy what one event asks for. Returning means handled (the kit records it);
        raising means try again (API unreachable, views not caught up)."""
        desire = desire_of(delivery, self.config.aliases, self.config.environment)
        if desire is None:
            return
        event_id, position = delivery.event.id, delivery.event.log_position
        name = await self._name_of(desire.model_id)
        target = place_target(self.config, desire)
        deployment_id = deployment_id_for(event_id, self.config.environment, target)

        def outcome(
            status: Literal["succeeded", "failed", "skipped", "recorded"],
            detail: str = "",
            path: Path | None = None,
        ) -> None:
            done = Outcome(
                status, event_id, name, desire.version, desire.follows, detail, deployment_id, path
            )
            self.outcomes.append(done)
            log.info("deploy-agent: %s", done.line())
            if self.on_outcome is not None:
                self.on_outcome(done)

        row = await self._version(name, desire.version, position)
        change = _superseded(row, desire, self.config.environment)
        if change is not None:
            # Settle a deployment an earlier attempt started for this event, if any.
            earlier = await self._run(name, deployment_id, wait=False)
            if earlier is not None and earlier.status == "started":
                await self._report(
                    name, deployment_id, "failed", f"superseded before it finished: {change}"
                )
            outcome("skipped", f"superseded: {change}")
            return

        try:
            await self.client.start_deployment(
                name,
                desire.version,
                environment=self.config.environment,
                target=target,
                desired_stage=desire.stage,
                desired_alias=desire.alias,
                deployment_id=deployment_id,
                comment=f"deploy-agent: {desire.follows} is v{desire.version} (log position {position})",
            )
        except Conflict as exc:
            if exc.code != "already_exists":
                raise
            # This event was handled before, at least in part (a crash before its dedup
            # record, or a lost state file): finish the deployment if it is still
            # running, else leave it as it ended.
            run = await self._run(name, deployment_id, wait=True)
            if run is not None and run.status != "started":
                outcome("recorded", f"deployment {deployment_id} already {run.status}")
                return

        path = (
            self.config.out / f"{resource_name(name, self.config.environment, desire.alias)}.yaml"
        )
        try:
            manifest = render_manifest(
                self.config,
                row,
                desire,
                name=path.stem,
                deployment_id=deployment_id,
                event_id=event_id,
                log_position=position,
            )
            owner = await asyncio.to_thread(_claimed_by, path)
            ours = f"{row.model_id} {self.config.environment} {target}"
            if owner is not None and owner != ours:
                raise RenderError(
                    f"{path} is taken by another place ({owner}); refusing to overwrite it"
                )
            changed = await asyncio.to_thread(write_atomically, path, manifest)
        except (RenderError, OSError) as exc:
            reason = (
                str(exc)
                if isinstance(exc, RenderError)
                else f"cannot write {path}: {exc.strerror or exc}"
            )
            await self._report(name, deployment_id, "failed", reason)
            outcome("failed", reason)
            return
        await self._report(name, deployment_id, "succeeded", f"manifest {path.name}")
        outcome("succeeded", "" if changed else "the manifest was already in place", path)

    # ------------------------------------------------------------ registry reads and writes

    async def _name_of(self, model_id: str) -> str:
        """The model's current name (the API addresses models by name; events by id)."""
        if model_id not in self._names:
            for archived in (False, True):
                async for model in self.client.iter_models(archived=archived):
                    self._names[model.model_id] = model.name
            if model_id not in self._names:
                raise LookupError(f"no model with id {model_id} is visible to this token")
        return self._names[model_id]

    async def _version(self, name: str, version: int, position: int) -> VersionRow:
        """The version as the views show it once they include ``position`` (the event),
        so its stage and aliases are at least as new as the event."""
        path = f"/api/v1/models/{quote(name, safe='')}/versions/{version}"
        try:
            response = await self.client.request("GET", path, params={"min_position": position})
        except NotFound:
            self._names.clear()  # renamed since: look the name up again on the retry
            raise
        return msgspec.json.decode(response.content, type=VersionRow)

    async def _run(self, name: str, deployment_id: str, *, wait: bool) -> DeploymentRun | None:
        deadline = time.monotonic() + (self.config.visibility_timeout if wait else 0.0)
        while True:
            runs = await self.client.deployment_runs(
                name, environment=self.config.environment, limit=1000
            )
            found = next((r for r in runs if r.deployment_id == deployment_id), None)
            if found is not None or time.monotonic() >= deadline:
                if found is None and wait:
                    raise TimeoutError(
                        f"deployment {deployment_id} exists but the views do not show it yet"
                    )
                return found
            await asyncio.sleep(0.2)

    async def _report(
        self, name: str, deployment_id: str, status: Literal["succeeded", "failed"], text: str
    ) -> None:
        if status == "failed":
            await self.client.report_deployment(name, deployment_id, "failed", reason=text[:1000])
        else:
            await self.client.report_deployment(name, deployment_id, "succeeded", comment=text)


def _superseded(row: VersionRow, desire: Desire, environment: str) -> str | None:
    """None when the version still holds what the event gave it (in ``environment``, for a
    stage with environments); else what changed."""
    if desire.stage is not None and row.stage != desire.stage:
        return f"v{row.version} is in {row.stage} now"
    if desire.stage is not None and row.environments and environment not in row.environments:
        return f"v{row.version} is in {row.stage} in {', '.join(row.environments)} only now"
    if desire.alias is not None and desire.alias not in row.aliases:
        return f"{desire.alias} no longer points at v{row.version}"
    return None


async def run_agent(
    nc: NatsClient,
    agent: DeployAgent,
    subscription: Subscription,
    dedup: DedupStore,
    stop: asyncio.Event,
    *,
    once: bool = False,
) -> ConsumerStats:
    """Consume until ``stop`` is set, or with ``once`` until nothing is left to handle."""
    consumer = EventConsumer(nc, subscription, dedup, agent.handle)
    if once:
        # A batch of 0 means a pull waited ``pull_wait`` seconds and nothing came.
        while not stop.is_set() and await consumer.process_batch():
            pass
    else:
        await consumer.run(stop)
    return consumer.stats


__all__ = [
    "AgentConfig",
    "DeployAgent",
    "Desire",
    "Outcome",
    "RenderError",
    "deployment_id_for",
    "desire_of",
    "package_root",
    "registry_uri",
    "render_manifest",
    "resource_name",
    "run_agent",
    "storage_uri",
    "write_atomically",
]
