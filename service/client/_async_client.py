"""``AsyncClient``: the whole v1 API for asyncio code.

This file is the source of both clients: ``_sync_client.py`` is generated from it by
``python -m service.client._unasync`` (``async``/``await`` removed, ``AsyncClient`` ->
``Client``). Edit here, then regenerate; a unit test fails while the two differ.
"""

from __future__ import annotations

import platform
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx

from events.access import Permission, Role
from events.policy import GovernancePolicy
from events.stages import Stage
from service.client import gitinfo
from service.client._common import (
    MAX_BATCH,
    Batch,
    MetricBuffer,
    MetricsArg,
    aware,
    flush_at_exit,
    log,
    model_path,
    points,
    seg,
    version_path,
)
from service.client._transport import (
    RETRIED_ERRORS,
    AsyncTransport,
    Params,
    RetryPolicy,
    decode,
    default_retry,
    encode,
    error_of,
    etag_version,
    new_key,
    resolve,
)
from service.client.downloads import PARTIAL_SUFFIX, download_file, target_of
from service.client.errors import Conflict, ModelregError, NotFound, ServerError, Unreachable
from service.client.manifest import (
    DEFAULT_EXCLUDE,
    build_manifest,
    hash_files,
    progress_bar,
    show_progress,
)
from service.client.models import (
    AccessCheck,
    AccessView,
    AliasInterval,
    ApprovalRequest,
    ArtifactEntry,
    AuditPage,
    CodeReference,
    Comparison,
    DatasetReference,
    Denial,
    DenialsPage,
    Dependencies,
    DeploymentRun,
    Downloaded,
    Erasure,
    EventsPage,
    FileTransfer,
    IssuedToken,
    LoggedEvent,
    MetricSample,
    MetricSeries,
    MetricValue,
    ModelRow,
    ModelSignature,
    Page,
    ParamValue,
    Place,
    PolicyView,
    Principal,
    Receipt,
    RegisteredVersion,
    RoleInfo,
    RunReference,
    ServiceAccountInfo,
    StageInterval,
    Subject,
    TokenInfo,
    VerifyReport,
    VersionRow,
)
from service.client.uploads import DEFAULT_PARALLEL, upload_files

T = TypeVar("T")
STAGE_PREFIX = "stage:"
AsOf = int | datetime | str | None
Tags = Mapping[str, str] | Sequence[str] | None
Auto = Literal["auto"]


def _tags(tags: Tags) -> list[str] | None:
    """Tag filters: ``{"team": "risk"}`` or ``["team=risk", "pii"]`` (a bare key: the tag is set)."""
    if tags is None:
        return None
    if isinstance(tags, Mapping):
        return [f"{k}={v}" for k, v in tags.items()]
    return list(tags)


def _as_of(value: AsOf) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class AsyncClient:
    """The registry's v1 API. Configured by arguments or ``MODELREG_URL`` / ``MODELREG_TOKEN``.

    ``read_your_writes`` (default on): every read waits until the registry's views show
    this client's latest write, so a search right after a registration finds it.
    ``log_metrics`` buffers points and sends them in batches of ``metrics_batch_size``,
    at the latest ``metrics_flush_interval`` seconds after the oldest was logged (checked
    on each call), on ``flush()``, before any read, and on close. Use it as a context
    manager, or call ``aclose()``.
    """

    _FLUSH_AT_EXIT = False

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        read_your_writes: bool = True,
        metrics_batch_size: int = MAX_BATCH,
        metrics_flush_interval: float = 5.0,
        progress: bool | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url, secret = resolve(url, token)
        self.read_your_writes = read_your_writes
        self.progress = progress
        self._transport = AsyncTransport(
            self.url,
            secret,
            timeout=timeout,
            retry=retry or default_retry(),
            transport=transport,
            headers=headers,
        )
        self._metrics = MetricBuffer(metrics_batch_size, metrics_flush_interval)
        self._exit_hook = flush_at_exit(self) if self._FLUSH_AT_EXIT else None

    # ------------------------------------------------------------------ plumbing

    @property
    def last_position(self) -> int | None:
        """The log position of this client's latest write (None before the first)."""
        return self._transport.last_position

    @property
    def retry(self) -> RetryPolicy:
        return self._transport.retry

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            await self.flush()  # metrics logged before a crash are worth keeping too
        except ModelregError as exc:
            if kind is None:
                raise
            log.warning("modelreg: %d metric points were not sent: %s", self._metrics.pending, exc)
        finally:
            await self.aclose(flush=False)

    async def aclose(self, *, flush: bool = True) -> None:
        """Send buffered metrics (unless ``flush=False``), then close the connections."""
        try:
            if flush:
                await self.flush()
        finally:
            if self._exit_hook is not None:
                self._exit_hook.cancel()
            await self._transport.aclose()

    async def _get(
        self, path: str, kind: type[T], params: Params | None = None, *, consistent: bool = True
    ) -> T:
        return decode(await self._read(path, params, consistent=consistent), kind)

    async def _read(
        self, path: str, params: Params | None = None, *, consistent: bool = True
    ) -> httpx.Response:
        if self._metrics.pending:
            await self.flush()
        query = dict(params or {})
        position = self._transport.last_position
        if consistent and self.read_your_writes and position and query.get("as_of") is None:
            query["min_position"] = max(position, query.get("min_position") or 0)
        return await self._transport.send("GET", path, params=query)

    async def _write(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        kind: type[T] = Receipt,  # type: ignore[assignment]
        params: Params | None = None,
        key: str | None = None,
        if_version: int | None = None,
    ) -> T:
        payload = None if body is None else encode(body)
        response = await self._transport.send(
            method, path, params=params, body=payload, idempotency_key=key, if_version=if_version
        )
        return decode(response, kind)

    async def request(
        self, method: str, path: str, *, params: Params | None = None, json: Any = None
    ) -> httpx.Response:
        """Any other call, with the same retries, idempotency and typed errors."""
        body = None if json is None else encode(json)
        return await self._transport.send(method, path, params=params, body=body)

    # ------------------------------------------------------------------ models

    async def list_models(
        self,
        q: str | None = None,
        *,
        tags: Tags = None,
        stages: Sequence[Stage | str] | None = None,
        alias: str | None = None,
        owner: str | None = None,
        metrics: Sequence[str] | None = None,
        archived: bool = False,
        order_by: str = "name",
        limit: int = 50,
        cursor: str | None = None,
        as_of: AsOf = None,
    ) -> Page[ModelRow]:
        """One page of models. ``q``: name substring or glob (``churn-*``); ``metrics``:
        filters such as ``"auc>0.9"`` or ``"auc[holdout]>=0.9"``; ``order_by``: name,
        created or updated, ``-`` for descending."""
        params = {
            "q": q,
            "tag": _tags(tags),
            "stage": list(stages or []),
            "alias": alias,
            "owner": owner,
            "metric": list(metrics or []),
            "archived": archived,
            "order_by": order_by,
            "limit": limit,
            "cursor": cursor,
            "as_of": _as_of(as_of),
        }
        return await self._get("/api/v1/models", Page[ModelRow], params)

    async def iter_models(
        self, q: str | None = None, *, page_size: int = 200, **filters: Any
    ) -> AsyncIterator[ModelRow]:
        """Every model matching the filters of ``list_models``, page after page."""
        cursor = None
        while True:
            page = await self.list_models(q, limit=page_size, cursor=cursor, **filters)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def get_model(self, name: str, *, as_of: AsOf = None) -> ModelRow:
        return await self._get(model_path(name), ModelRow, {"as_of": _as_of(as_of)})

    async def model_version(self, name: str) -> int:
        """The model's stream version (its ``ETag``). Pass it as ``if_version=`` to a write
        so that it happens only if nothing was written to the model since; otherwise it
        fails with ``PreconditionFailed`` (412) instead of building on a state you never saw."""
        return etag_version(await self._read(model_path(name)))

    async def policy_version(self) -> int:
        """The registry default policy's version (its ``ETag``), for ``set_policy(..., if_version=)``."""
        return etag_version(await self._read("/api/v1/policy", consistent=False))

    async def create_model(
        self,
        name: str,
        *,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        owner: str | None = None,
    ) -> Receipt:
        """Register a model; ``Conflict`` (code ``already_exists``) if the name is taken."""
        body = {"name": name, "description": description, "tags": dict(tags or {}), "owner": owner}
        return await self._write("POST", "/api/v1/models", body)

    async def update_model(
        self, name: str, *, description: str, if_version: int | None = None
    ) -> Receipt:
        return await self._write(
            "PATCH", model_path(name), {"description": description}, if_version=if_version
        )

    async def rename_model(
        self, name: str, new_name: str, *, if_version: int | None = None
    ) -> Receipt:
        return await self._write(
            "POST", f"{model_path(name)}/rename", {"new_name": new_name}, if_version=if_version
        )

    async def archive_model(
        self, name: str, reason: str, *, if_version: int | None = None
    ) -> Receipt:
        return await self._write(
            "POST", f"{model_path(name)}/archive", {"reason": reason}, if_version=if_version
        )

    async def delete_model(
        self, name: str, reason: str, *, if_version: int | None = None
    ) -> Receipt:
        """Delete a model (admin): gone from listings and search, its name free again, its
        history kept in the log behind a tombstone. Refused while a version is in production."""
        return await self._write(
            "POST", f"{model_path(name)}/delete", {"reason": reason}, if_version=if_version
        )

    async def restore_model(
        self, name: str, reason: str, *, if_version: int | None = None
    ) -> Receipt:
        return await self._write(
            "POST", f"{model_path(name)}/restore", {"reason": reason}, if_version=if_version
        )

    async def set_model_tag(
        self, name: str, key: str, value: str, *, if_version: int | None = None
    ) -> Receipt:
        return await self._write(
            "PUT", f"{model_path(name)}/tags/{seg(key)}", {"value": value}, if_version=if_version
        )

    async def remove_model_tag(
        self, name: str, key: str, *, if_version: int | None = None
    ) -> Receipt:
        return await self._write(
            "DELETE", f"{model_path(name)}/tags/{seg(key)}", if_version=if_version
        )

    # ------------------------------------------------------------------ versions

    async def list_versions(
        self,
        model: str,
        *,
        q: str | None = None,
        tags: Tags = None,
        stages: Sequence[Stage | str] | None = None,
        alias: str | None = None,
        metrics: Sequence[str] | None = None,
        deprecated: bool | None = None,
        order_by: str = "-version",
        limit: int = 50,
        cursor: str | None = None,
        as_of: AsOf = None,
        environment: str | None = None,
    ) -> Page[VersionRow]:
        """One page of a model's versions (newest first), with their latest metrics;
        ``order_by`` also takes ``metric:KEY[DATASET]``, e.g. ``-metric:auc[holdout]``;
        ``environment``: only versions in that environment of their stage."""
        params = {
            "environment": environment,
            "q": q,
            "tag": _tags(tags),
            "stage": list(stages or []),
            "alias": alias,
            "metric": list(metrics or []),
            "deprecated": deprecated,
            "order_by": order_by,
            "limit": limit,
            "cursor": cursor,
            "as_of": _as_of(as_of),
        }
        return await self._get(f"{model_path(model)}/versions", Page[VersionRow], params)

    async def iter_versions(
        self, model: str, *, page_size: int = 200, **filters: Any
    ) -> AsyncIterator[VersionRow]:
        cursor = None
        while True:
            page = await self.list_versions(model, limit=page_size, cursor=cursor, **filters)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def get_version(
        self, model: str, version: int | str, *, as_of: AsOf = None
    ) -> VersionRow:
        """A version by number, or by alias (``get_version("churn", "champion")``)."""
        if isinstance(version, str) and not version.isdigit():
            path = f"{model_path(model)}/versions/by-alias/{seg(version)}"
        else:
            path = version_path(model, int(version))
        return await self._get(path, VersionRow, {"as_of": _as_of(as_of)})

    async def register_version(
        self,
        model: str,
        *,
        artifacts_dir: str | PathLike[str] | None = None,
        manifest: Iterable[ArtifactEntry] | None = None,
        artifacts_uri: str | None = None,
        exclude: Sequence[str] = DEFAULT_EXCLUDE,
        params: Mapping[str, ParamValue] | None = None,
        metrics: MetricsArg | None = None,
        metrics_dataset: str | None = None,
        code: CodeReference | Auto | None = "auto",
        dependencies: Dependencies | Auto | None = "auto",
        datasets: Sequence[DatasetReference] = (),
        run: RunReference | None = None,
        signature: ModelSignature | None = None,
        tags: Mapping[str, str] | None = None,
        description: str = "",
        create_model: bool = True,
        external: bool = False,
        parallel: int = DEFAULT_PARALLEL,
    ) -> RegisteredVersion:
        """Register a new version of ``model`` and log its metrics.

        The artifacts are the files under ``artifacts_dir``, hashed here (streaming) and
        uploaded to the registry: only the blobs the model has not stored yet are sent,
        ``parallel`` at a time, with safe retries and a progress bar (``progress=``), then
        the version names them. ``external=True`` (or an ``artifacts_uri``, e.g.
        ``s3://models/churn/7``) uploads nothing and records where the files are instead
        (default: their local ``file://`` paths). A ready ``manifest`` is sent as given.
        ``code="auto"`` records the git checkout of the running
        script (remote, commit, path; a ``git.dirty`` tag when tracked files have
        uncommitted changes); ``dependencies="auto"`` the running Python version. With
        ``create_model`` (default) a missing model is registered first. ``metrics``
        (``{"auc": 0.93}`` or ``Metric`` structs, ``metrics_dataset`` for the mapping
        form) are logged right after, at step 0.
        """
        files: list[FileTransfer] = []
        created = False
        if artifacts_dir is not None and manifest is None and not (external or artifacts_uri):
            if create_model:
                created = await self._ensure_model(model)
            entries, files = await self._upload_dir(model, artifacts_dir, exclude, parallel)
        else:
            entries = await self._manifest(artifacts_dir, manifest, artifacts_uri, exclude)
        all_tags = dict(tags or {})
        if code == "auto":
            code, checkout = await self._transport.blocking(gitinfo.detect_code)
            if checkout is not None and checkout.dirty:
                all_tags.setdefault("git.dirty", "true")
        if dependencies == "auto":
            dependencies = Dependencies(python_version=platform.python_version())
        body = {
            "artifacts": entries,
            "code": code,
            "dependencies": dependencies,
            "params": dict(params or {}),
            "datasets": list(datasets),
            "run": run,
            "signature": signature,
            "tags": all_tags,
            "description": description,
        }
        receipt, created_now = await self._post_version(model, body, create_model=create_model)
        if receipt.version is None:
            raise ServerError(f"the registry registered no version: {receipt}", status=None)
        logged = await self._log_at_registration(model, receipt.version, metrics, metrics_dataset)
        last = logged[-1].position if logged else receipt.position
        return RegisteredVersion(
            model=model,
            model_id=receipt.model_id,
            version=receipt.version,
            position=last,
            receipt=receipt,
            metrics=logged,
            model_created=created or created_now,
            files=files,
        )

    async def _ensure_model(self, model: str) -> bool:
        """Create ``model`` unless it exists (its files are uploaded to it before the
        version is registered); whether this call created it. Asked first, so a token
        that may register versions but not create models is not refused."""
        try:
            await self._read(model_path(model))
            return False
        except NotFound:
            pass
        try:
            await self.create_model(model)
        except Conflict as taken:  # someone registered it in between: fine
            if taken.code != "already_exists":
                raise
            return False
        return True

    async def _upload_dir(
        self,
        model: str,
        artifacts_dir: str | PathLike[str],
        exclude: Sequence[str],
        parallel: int,
    ) -> tuple[tuple[ArtifactEntry, ...], list[FileTransfer]]:
        directory = artifacts_dir
        found = await self._transport.blocking(
            lambda: hash_files(directory, exclude=exclude, progress=self.progress)
        )
        files = await upload_files(
            self._transport, model, found, parallel=parallel, progress=self.progress
        )
        return tuple(f.entry() for f in found), files

    async def _manifest(
        self,
        artifacts_dir: str | PathLike[str] | None,
        manifest: Iterable[ArtifactEntry] | None,
        artifacts_uri: str | None,
        exclude: Sequence[str],
    ) -> tuple[ArtifactEntry, ...]:
        if manifest is not None:
            return tuple(manifest)
        if artifacts_dir is None:
            raise ValueError("register_version needs artifacts_dir=... or manifest=...")
        directory = artifacts_dir
        return await self._transport.blocking(
            lambda: build_manifest(
                directory, uri=artifacts_uri, exclude=exclude, progress=self.progress
            )
        )

    async def _post_version(
        self, model: str, body: dict[str, Any], *, create_model: bool
    ) -> tuple[Receipt, bool]:
        """Post the version; if the model is missing (and may be created), create it and
        post again under the same Idempotency-Key. Says whether it created the model."""
        key = new_key()
        path = f"{model_path(model)}/versions"
        created = False
        try:
            receipt: Receipt = await self._write("POST", path, body, key=key)
        except NotFound as exc:
            if not create_model or exc.details.get("name") != model:
                raise
            try:
                await self.create_model(model)
                created = True
            except Conflict as taken:  # someone registered it in between: fine
                if taken.code != "already_exists":
                    raise
            receipt = await self._write("POST", path, body, key=key)
        return receipt, created

    async def _log_at_registration(
        self, model: str, version: int, metrics: MetricsArg | None, dataset: str | None
    ) -> list[Receipt]:
        """Log ``metrics`` at step 0 now, in batches, bypassing the buffer."""
        logged: list[Receipt] = []
        if metrics is not None:
            found = points(metrics, dataset=dataset)
            for start in range(0, len(found), MAX_BATCH):
                batch = Batch(model, version, found[start : start + MAX_BATCH])
                logged.append(await self._send_batch(batch))
        return logged

    async def download(
        self,
        model: str,
        version: int | str | Stage,
        dest: str | PathLike[str],
        *,
        parallel: int = DEFAULT_PARALLEL,
    ) -> Downloaded:
        """Fetch every stored file of a version into the directory ``dest``.

        ``version``: a number (``3``), an alias (``"champion"`` or ``"@champion"``) or a
        stage (``Stage.PRODUCTION`` or ``"stage:production"``: the highest version in it).
        Each file is checked against the manifest's sha256 and size before it is renamed
        into place; an interrupted download resumes where it stopped; a file already there
        with the right digest is not fetched again; a path leading outside ``dest`` is
        refused. External entries are not fetched: ``Downloaded.external`` lists them.
        """
        row = await self._version_for_download(model, version)
        entries = row.content.artifacts if row.content is not None else ()
        stored = [e for e in entries if not e.external]
        root = Path(dest)
        await self._transport.blocking(lambda: root.mkdir(parents=True, exist_ok=True))
        for entry in stored:  # every path is checked before anything is written
            target_of(root, entry.path)
        total = sum(e.size for e in stored)
        show = show_progress(self.progress, total)
        with progress_bar(show, total, "downloading") as (describe, advance):

            async def fetch(entry: ArtifactEntry) -> FileTransfer:
                describe(entry.path)
                return await download_file(
                    self._transport, model, row.version, entry, root, advance=advance
                )

            files = await self._transport.each(stored, fetch, parallel)
        return Downloaded(
            model=model,
            version=row.version,
            dest=str(root),
            files=files,
            external=[e for e in entries if e.external],
        )

    async def _version_for_download(self, model: str, version: int | str | Stage) -> VersionRow:
        """The version a reference names, by number, so every file comes from that one
        version even if the alias or stage moves while they download."""
        if isinstance(version, Stage) or (
            isinstance(version, str) and version.startswith(STAGE_PREFIX)
        ):
            stage = str(version).removeprefix(STAGE_PREFIX)
            page = await self.list_versions(model, stages=[stage], order_by="-version", limit=1)
            if not page.items:
                raise NotFound(
                    f"model {model!r} has no version in {stage}", status=404, code="not_found"
                )
            version = page.items[0].version  # a list row has no content: read the version
        if isinstance(version, str):
            version = version.removeprefix("@")
        return await self.get_version(model, version)

    async def download_archive(
        self,
        model: str,
        version: int | str,
        dest: str | PathLike[str],
        *,
        format: Literal["tar", "zip"] = "tar",
    ) -> Path:
        """The whole version as one tar or zip file at ``dest`` (written to a temporary
        name, renamed when complete). ``version`` as the API takes it: ``3``,
        ``@champion``, ``stage:production``. The registry re-hashes every file on the way
        out and cuts the stream on a corrupt one, which raises here and keeps nothing."""
        ref = str(version)
        target = Path(dest)
        partial = target.with_name(target.name + PARTIAL_SUFFIX)
        path = f"{model_path(model)}/versions/{seg(ref)}/archive?format={format}"
        try:
            async with self._transport.stream("GET", path, {}) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_of(response)
                with partial.open("wb") as handle:
                    async for chunk in response.aiter_bytes():
                        handle.write(chunk)
        except RETRIED_ERRORS as exc:
            partial.unlink(missing_ok=True)
            raise Unreachable(
                f"the archive of {model} {ref} broke off ({type(exc).__name__}); nothing kept",
                method="GET",
                url=path,
            ) from exc
        partial.replace(target)
        return target

    async def update_version(
        self,
        model: str,
        version: int,
        *,
        description: str,
        if_version: int | None = None,
    ) -> Receipt:
        return await self._write(
            "PATCH",
            version_path(model, version),
            {"description": description},
            if_version=if_version,
        )

    async def set_version_tag(
        self,
        model: str,
        version: int,
        key: str,
        value: str,
        *,
        if_version: int | None = None,
    ) -> Receipt:
        return await self._write(
            "PUT",
            f"{version_path(model, version)}/tags/{seg(key)}",
            {"value": value},
            if_version=if_version,
        )

    async def remove_version_tag(
        self,
        model: str,
        version: int,
        key: str,
        *,
        if_version: int | None = None,
    ) -> Receipt:
        return await self._write(
            "DELETE", f"{version_path(model, version)}/tags/{seg(key)}", if_version=if_version
        )

    async def deprecate_version(
        self,
        model: str,
        version: int,
        reason: str,
        *,
        if_version: int | None = None,
    ) -> Receipt:
        return await self._write(
            "POST",
            f"{version_path(model, version)}/deprecate",
            {"reason": reason},
            if_version=if_version,
        )

    # ------------------------------------------------------------------ metrics

    async def log_metrics(
        self,
        model: str,
        version: int,
        metrics: MetricsArg,
        *,
        step: int = 0,
        dataset: str | None = None,
        timestamp: datetime | None = None,
    ) -> list[Receipt]:
        """Log points (``{"loss": 0.3, "auc": 0.91}`` at ``step``, or ``Metric`` structs).

        Buffered: returns the receipts of the batches this call happened to send (usually
        none). ``flush()`` sends the rest; so do reads, ``close`` and leaving a ``with``.
        """
        self._metrics.add(
            model, version, points(metrics, step=step, dataset=dataset, timestamp=timestamp)
        )
        if self._metrics.due():
            return await self.flush()
        return []

    async def log_metric(
        self,
        model: str,
        version: int,
        key: str,
        value: float,
        *,
        step: int = 0,
        dataset: str | None = None,
        timestamp: datetime | None = None,
    ) -> list[Receipt]:
        return await self.log_metrics(
            model, version, {key: value}, step=step, dataset=dataset, timestamp=timestamp
        )

    async def flush(self) -> list[Receipt]:
        """Send every buffered metric point now; the receipts of the batches sent.

        A batch the server refuses (4xx) is dropped and its error raised; a batch that could
        not be delivered stays queued, with its Idempotency-Key, for the next flush.
        """
        self._metrics.seal()
        sent: list[Receipt] = []
        while (batch := self._metrics.next_batch()) is not None:
            sent.append(await self._send_batch(batch))
        return sent

    @property
    def pending_metrics(self) -> int:
        """Metric points logged but not yet accepted by the registry."""
        return self._metrics.pending

    async def _send_batch(self, batch: Batch) -> Receipt:
        body = {"metrics": batch.points}
        try:
            receipt: Receipt = await self._write(
                "POST", f"{version_path(batch.model, batch.version)}/metrics", body, key=batch.key
            )
        except ModelregError as exc:
            if exc.refused:
                self._metrics.done(batch)
            raise
        self._metrics.done(batch)
        return receipt

    async def get_metrics(
        self, model: str, version: int, *, as_of: AsOf = None
    ) -> list[MetricValue]:
        """The latest value of every (key, dataset) of a version."""
        return await self._get(
            f"{version_path(model, version)}/metrics", list[MetricValue], {"as_of": _as_of(as_of)}
        )

    async def metric_history(
        self,
        model: str,
        version: int,
        key: str,
        *,
        dataset: str | None = None,
        limit: int = 1000,
        cursor: str | None = None,
        as_of: AsOf = None,
    ) -> Page[MetricSample]:
        """Every logged point of one key, by step."""
        params = {
            "key": key,
            "dataset": dataset,
            "limit": limit,
            "cursor": cursor,
            "as_of": _as_of(as_of),
        }
        return await self._get(
            f"{version_path(model, version)}/metrics", Page[MetricSample], params
        )

    async def metric_series(
        self, model: str, version: int, *, as_of: AsOf = None
    ) -> list[MetricSeries]:
        return await self._get(
            f"{version_path(model, version)}/metrics/series",
            list[MetricSeries],
            {"as_of": _as_of(as_of)},
        )

    async def best_metric(
        self,
        model: str,
        version: int,
        key: str,
        *,
        dataset: str = "",
        goal: Literal["max", "min"] = "max",
        as_of: AsOf = None,
    ) -> MetricSample:
        params = {"dataset": dataset, "goal": goal, "as_of": _as_of(as_of)}
        return await self._get(
            f"{version_path(model, version)}/metrics/{seg(key)}/best", MetricSample, params
        )

    async def compare_versions(
        self, model: str, versions: Sequence[int], *, as_of: AsOf = None
    ) -> Comparison:
        """Parameters and latest metrics of several versions side by side."""
        params = {"versions": ",".join(str(int(v)) for v in versions), "as_of": _as_of(as_of)}
        return await self._get(f"{model_path(model)}/compare", Comparison, params)

    # ------------------------------------------------------------------ lifecycle

    async def transition(
        self,
        model: str,
        version: int,
        stage: Stage | str,
        *,
        comment: str = "",
        if_version: int | None = None,
        environment: str | None = None,
    ) -> Receipt:
        """Move a version to a stage (in ``environment``, required for a stage with
        environments). When the policy needs approval this opens a promotion request
        instead: ``receipt.pending`` and ``receipt.request_id`` say so."""
        body: dict[str, Any] = {"to": str(stage), "comment": comment}
        if environment is not None:
            body["environment"] = environment
        return await self._write(
            "POST", f"{version_path(model, version)}/stage", body, if_version=if_version
        )

    async def rollback(self, model: str, reason: str, *, if_version: int | None = None) -> Receipt:
        """Re-promote the version that was in production before the current one."""
        return await self._write(
            "POST", f"{model_path(model)}/rollback", {"reason": reason}, if_version=if_version
        )

    async def restore_version(
        self, model: str, version: int, reason: str, *, if_version: int | None = None
    ) -> Receipt:
        """Bring an archived version (or one left in a stage its policy no longer defines)
        back to the policy's initial stage; admin only."""
        return await self._write(
            "POST",
            f"{version_path(model, version)}/restore",
            {"reason": reason},
            if_version=if_version,
        )

    async def set_alias(
        self,
        model: str,
        alias: str,
        version: int,
        *,
        comment: str = "",
        if_version: int | None = None,
    ) -> Receipt:
        return await self._write(
            "PUT",
            f"{model_path(model)}/aliases/{seg(alias)}",
            {"version": int(version), "comment": comment},
            if_version=if_version,
        )

    async def remove_alias(
        self, model: str, alias: str, *, if_version: int | None = None
    ) -> Receipt:
        return await self._write(
            "DELETE", f"{model_path(model)}/aliases/{seg(alias)}", if_version=if_version
        )

    async def alias_history(
        self, model: str, alias: str, *, as_of: AsOf = None
    ) -> list[AliasInterval]:
        return await self._get(
            f"{model_path(model)}/aliases/{seg(alias)}",
            list[AliasInterval],
            {"as_of": _as_of(as_of)},
        )

    async def timeline(
        self,
        model: str,
        *,
        stage: Stage | str | None = None,
        at: int | datetime | str | None = None,
        environment: str | None = None,
    ) -> list[StageInterval]:
        """Which version held each stage from when to when; with ``at``, the holders then;
        with ``environment``, the intervals of ``stage@environment``."""
        params = {
            "stage": str(stage) if stage else None,
            "at": _as_of(at),
            "environment": environment,
        }
        return await self._get(f"{model_path(model)}/timeline", list[StageInterval], params)

    async def get_policy(self, model: str | None = None) -> PolicyView:
        """The policy in force for a model (its own, or the registry's), or the registry's."""
        path = f"{model_path(model)}/policy" if model else "/api/v1/policy"
        return await self._get(path, PolicyView, consistent=False)

    async def set_policy(
        self,
        policy: GovernancePolicy | Mapping[str, Any],
        *,
        model: str | None = None,
        comment: str = "",
        if_version: int | None = None,
    ) -> Receipt:
        """Set a model's policy, or the registry default (``model=None``, admin only). A
        mapping is sent as given, so the server names a misspelt field instead of ignoring it."""
        value = policy if isinstance(policy, GovernancePolicy) else dict(policy)
        path = f"{model_path(model)}/policy" if model else "/api/v1/policy"
        return await self._write(
            "PUT", path, {"policy": value, "comment": comment}, if_version=if_version
        )

    async def clear_policy(self, model: str, *, if_version: int | None = None) -> Receipt:
        return await self._write("DELETE", f"{model_path(model)}/policy", if_version=if_version)

    # ------------------------------------------------------------------ promotions

    async def request_promotion(
        self,
        model: str,
        version: int,
        *,
        justification: str,
        stage: Stage | str | None = None,
        alias: str | None = None,
        rollback: bool = False,
        if_version: int | None = None,
        environment: str | None = None,
    ) -> Receipt:
        """Ask for a stage (in ``environment``, for a stage with environments) and/or alias;
        runs at once when no approval is needed."""
        body: dict[str, Any] = {
            "version": int(version),
            "justification": justification,
            "target_stage": str(stage) if stage else None,
            "alias": alias,
            "rollback": rollback,
        }
        if environment is not None:
            body["environment"] = environment
        return await self._write(
            "POST", f"{model_path(model)}/promotions", body, if_version=if_version
        )

    async def list_promotions(
        self, state: Literal["open", "decided", "mine"] = "open", *, model: str | None = None
    ) -> list[ApprovalRequest]:
        """Open or decided requests (of one model, or all); ``mine``: those awaiting me."""
        if model is not None:
            if state == "mine":
                raise ValueError("state='mine' lists requests across models; leave model out")
            return await self._get(
                f"{model_path(model)}/promotions", list[ApprovalRequest], {"state": state}
            )
        return await self._get("/api/v1/promotions", list[ApprovalRequest], {"state": state})

    async def get_promotion(self, request_id: str) -> ApprovalRequest:
        return await self._get(f"/api/v1/promotions/{seg(request_id)}", ApprovalRequest)

    async def approve(
        self, request_id: str, comment: str = "", *, if_version: int | None = None
    ) -> Receipt:
        """Approve; the approval that satisfies the policy executes the promotion (``executed``)."""
        return await self._write(
            "POST",
            f"/api/v1/promotions/{seg(request_id)}/approve",
            {"comment": comment},
            if_version=if_version,
        )

    async def reject(
        self, request_id: str, comment: str = "", *, if_version: int | None = None
    ) -> Receipt:
        return await self._write(
            "POST",
            f"/api/v1/promotions/{seg(request_id)}/reject",
            {"comment": comment},
            if_version=if_version,
        )

    async def cancel_promotion(
        self, request_id: str, comment: str = "", *, if_version: int | None = None
    ) -> Receipt:
        return await self._write(
            "POST",
            f"/api/v1/promotions/{seg(request_id)}/cancel",
            {"comment": comment},
            if_version=if_version,
        )

    # ------------------------------------------------------------------ deployments

    async def start_deployment(
        self,
        model: str,
        version: int,
        *,
        environment: str,
        target: str,
        desired_stage: Stage | str | None = None,
        desired_alias: str | None = None,
        comment: str = "",
        deployment_id: str | None = None,
    ) -> Receipt:
        """Report that a deployment of ``version`` started; ``receipt.request_id`` is its id."""
        body = {
            "environment": environment,
            "target": target,
            "desired_stage": str(desired_stage) if desired_stage else None,
            "desired_alias": desired_alias,
            "comment": comment,
            "deployment_id": deployment_id,
        }
        return await self._write("POST", f"{version_path(model, version)}/deployments", body)

    async def report_deployment(
        self,
        model: str,
        deployment_id: str,
        status: Literal["succeeded", "failed", "rolled_back"],
        *,
        reason: str = "",
        comment: str = "",
    ) -> Receipt:
        body = {
            "deployment_id": deployment_id,
            "status": status,
            "reason": reason,
            "comment": comment,
        }
        return await self._write("POST", f"{model_path(model)}/deployments/report", body)

    async def deployments(
        self,
        model: str,
        *,
        environment: str | None = None,
        drifted: bool = False,
        as_of: AsOf = None,
    ) -> list[Place]:
        """Desired against actual per environment and target, with the drift."""
        params = {"environment": environment, "drifted": drifted, "as_of": _as_of(as_of)}
        return await self._get(f"{model_path(model)}/deployments", list[Place], params)

    async def deployment_runs(
        self,
        model: str,
        *,
        environment: str | None = None,
        before_position: int | None = None,
        limit: int = 100,
    ) -> list[DeploymentRun]:
        params = {"environment": environment, "before_position": before_position, "limit": limit}
        return await self._get(f"{model_path(model)}/deployments/runs", list[DeploymentRun], params)

    # ------------------------------------------------------------------ audit

    async def history(
        self,
        model: str,
        *,
        actor: str | None = None,
        types: Sequence[str] | None = None,
        version: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: int | None = None,
        limit: int = 100,
        oldest_first: bool = False,
        as_of: AsOf = None,
    ) -> AuditPage:
        """Every event of a model: who did what, when and why (newest first by default)."""
        params = {
            "actor": actor,
            "type": list(types or []),
            "version": version,
            "since": aware(since),
            "until": aware(until),
            "cursor": cursor,
            "limit": limit,
            "oldest_first": oldest_first,
            "as_of": _as_of(as_of),
        }
        return await self._get(f"{model_path(model)}/history", AuditPage, params)

    async def actor_history(
        self, actor: str, *, cursor: int | None = None, limit: int = 100
    ) -> AuditPage:
        """Everything one person (or system) did, newest first."""
        return await self._get(
            f"/api/v1/audit/actors/{seg(actor)}", AuditPage, {"cursor": cursor, "limit": limit}
        )

    async def events(
        self,
        after: int = 0,
        *,
        limit: int = 500,
        types: Sequence[str] | None = None,
        model: str | None = None,
    ) -> EventsPage:
        """The global log after a position, as stored (hash-chained envelopes)."""
        params = {"after": after, "limit": limit, "type": list(types or []), "model": model}
        return await self._get("/api/v1/events", EventsPage, params, consistent=False)

    async def head_position(self) -> int:
        """The last position of the global log (a few tiny requests: galloping, then bisection)."""

        async def written(position: int) -> bool:
            page = await self.events(position - 1, limit=1)
            return bool(page.items)

        low, step = 0, 1  # invariant: position ``low`` is written (0: trivially)
        while await written(low + step):
            low, step = low + step, step * 2
        high = low + step  # not written
        while high - low > 1:
            middle = (low + high) // 2
            if await written(middle):
                low = middle
            else:
                high = middle
        return low

    async def follow_events(
        self,
        after: int = 0,
        *,
        types: Sequence[str] | None = None,
        model: str | None = None,
        poll_interval: float = 1.0,
        batch: int = 500,
    ) -> AsyncIterator[LoggedEvent]:
        """Events after ``after`` as they are sealed, forever (break out of the loop to stop)."""
        position = after
        while True:
            page = await self.events(position, limit=batch, types=types, model=model)
            for item in page.items:
                position = item.log_position
                yield item
            if len(page.items) < batch:
                await self._transport.sleep(poll_interval)

    async def verify(self) -> VerifyReport:
        """Recompute both hash chains on the server; ``first_break`` names any tampering."""
        return await self._get("/api/v1/audit/verify", VerifyReport, consistent=False)

    async def denials(
        self,
        *,
        principal: str | None = None,
        model: str | None = None,
        code: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> DenialsPage:
        """Refused requests, newest first (admin): who was refused what, why, how often."""
        params = {
            "principal": principal,
            "model": model,
            "code": code,
            "since": aware(since),
            "until": aware(until),
            "before": before,
            "limit": limit,
        }
        return await self._get("/api/v1/audit/denials", DenialsPage, params, consistent=False)

    async def all_denials(self, **filters: Any) -> AsyncIterator[Denial]:
        """Every refused request matching ``filters`` (as ``denials``), page after page."""
        before: str | None = None
        while True:
            page = await self.denials(before=before, **filters)
            for item in page.items:
                yield item
            if page.next_before is None:
                return
            before = page.next_before

    async def event_schema(self) -> dict[str, Any]:
        """JSON Schema (2020-12) of every event payload."""
        return await self._get("/api/v1/events/schema", dict[str, Any], consistent=False)

    # ------------------------------------------------------------------ tokens and identity

    async def whoami(self) -> Principal:
        return await self._get("/api/v1/me", Principal, consistent=False)

    async def create_token(
        self,
        principal: str,
        roles: Sequence[Role | str],
        *,
        scopes: Sequence[str] = (),
        expires_at: datetime | None = None,
        description: str = "",
    ) -> IssuedToken:
        """Issue a token (admin). Its ``secret`` is in this answer only: a retry whose first
        answer was lost gets the same token without it (revoke it and issue another)."""
        body = {
            "principal": principal,
            "roles": [str(Role(r)) for r in roles],
            "scopes": list(scopes),
            "expires_at": aware(expires_at),
            "description": description,
        }
        return await self._write("POST", "/api/v1/tokens", body, kind=IssuedToken)

    async def create_service_account_token(
        self, name: str, expires_at: datetime, *, description: str = ""
    ) -> IssuedToken:
        """Issue a token of service account ``name`` (admin): it carries the account's roles
        and scopes and must expire within the account's maximum lifetime (422 otherwise)."""
        body = {
            "service_account": name,
            "expires_at": aware(expires_at),
            "description": description,
        }
        return await self._write("POST", "/api/v1/tokens", body, kind=IssuedToken)

    # ------------------------------------------------------------------ roles, grants, accounts

    async def list_roles(self) -> list[RoleInfo]:
        """The built-in and the custom roles (admin)."""
        return await self._get("/api/v1/access/roles", list[RoleInfo], consistent=False)

    async def define_role(
        self, name: str, permissions: Sequence[Permission | str], *, description: str = ""
    ) -> Receipt:
        """Define or redefine a custom role (admin); the four built-in ones are fixed."""
        body = {
            "permissions": [str(Permission(p)) for p in permissions],
            "description": description,
        }
        return await self._write("PUT", f"/api/v1/access/roles/{seg(name)}", body)

    async def remove_role(self, name: str, reason: str = "") -> Receipt:
        return await self._write(
            "DELETE", f"/api/v1/access/roles/{seg(name)}", params={"reason": reason}
        )

    async def grants(self, *, as_of: AsOf = None) -> AccessView:
        """The roles and grants now, or as they stood at a log position or time (admin)."""
        return await self._get("/api/v1/access/grants", AccessView, {"as_of": _as_of(as_of)})

    async def grant(
        self,
        role: str,
        model: str,
        *,
        principal: str | None = None,
        group: str | None = None,
        reason: str = "",
    ) -> Receipt:
        """Give ``role`` on ``model`` (a name, a prefix ending in *, or *) to a principal or
        a group (admin); the receipt's ``request_id`` is the grant's id."""
        body = {
            "role": role,
            "model": model,
            "principal": principal,
            "group": group,
            "reason": reason,
        }
        return await self._write("POST", "/api/v1/access/grants", body)

    async def withdraw_grant(self, grant_id: str, reason: str = "") -> Receipt:
        return await self._write(
            "DELETE", f"/api/v1/access/grants/{seg(grant_id)}", params={"reason": reason}
        )

    async def check_access(
        self,
        principal: str,
        permission: Permission | str,
        *,
        model: str | None = None,
        groups: Sequence[str] = (),
        as_of: AsOf = None,
    ) -> AccessCheck:
        """Could ``principal`` do ``permission`` on ``model`` (now, or at ``as_of``), and
        which token or grant decided (admin)."""
        params = {
            "principal": principal,
            "permission": str(Permission(permission)),
            "model": model,
            "group": list(groups),
            "as_of": _as_of(as_of),
        }
        return await self._get("/api/v1/access/check", AccessCheck, params)

    async def list_service_accounts(self) -> list[ServiceAccountInfo]:
        return await self._get(
            "/api/v1/service-accounts", list[ServiceAccountInfo], consistent=False
        )

    async def create_service_account(
        self,
        name: str,
        roles: Sequence[Role | str],
        *,
        scopes: Sequence[str] = (),
        max_lifetime: timedelta | None = None,
        description: str = "",
    ) -> Receipt:
        """Create a service account for CI (admin); ``max_lifetime`` bounds its tokens
        (default 90 days, at most 365)."""
        body: dict[str, Any] = {
            "name": name,
            "roles": [str(Role(r)) for r in roles],
            "scopes": list(scopes),
            "description": description,
        }
        if max_lifetime is not None:
            body["max_lifetime_seconds"] = int(max_lifetime.total_seconds())
        return await self._write("POST", "/api/v1/service-accounts", body)

    async def disable_service_account(self, name: str, reason: str = "") -> Receipt:
        """Disable a service account: all its tokens are refused from now on (admin)."""
        return await self._write(
            "POST", f"/api/v1/service-accounts/{seg(name)}/disable", params={"reason": reason}
        )

    async def list_tokens(self) -> list[TokenInfo]:
        return await self._get("/api/v1/tokens", list[TokenInfo], consistent=False)

    async def revoke_token(self, token_id: str, reason: str = "") -> Receipt:
        return await self._write(
            "DELETE", f"/api/v1/tokens/{seg(token_id)}", params={"reason": reason}
        )

    # ------------------------------------------------------------------ personal data

    async def subject(self, who: str) -> Subject:
        """Who a subject id (as events record people) stands for, or a principal's subject;
        ``erased`` once the person was erased."""
        return await self._get(f"/api/v1/subjects/{seg(who)}", Subject, consistent=False)

    async def erase_subject(self, who: str, reason: str) -> Erasure:
        """Erase a person (admin), by subject id or principal name: their tokens are
        revoked and their name deleted; answers then show "erased subject"."""
        return await self._write(
            "POST", f"/api/v1/subjects/{seg(who)}/erase", {"reason": reason}, kind=Erasure
        )

    # ------------------------------------------------------------------ CI/CD and webhooks

    async def gate_check(
        self, model: str, version: int, to: Stage | str, *, environment: str | None = None
    ) -> dict[str, Any]:
        """Would moving ``version`` to stage ``to`` (in ``environment``) pass the policy and
        its gates now? A dry run: ``passes``, ``outcome`` (direct, needs_approval, refused)
        and ``reason``."""
        return await self._get(
            f"{version_path(model, version)}/gate",
            dict[str, Any],
            {"to": str(to), "environment": environment},
        )

    async def create_webhook(
        self,
        url: str,
        *,
        event_types: Sequence[str] = (),
        models: Sequence[str] = (),
        payload_format: Literal["modelreg", "mlflow"] = "modelreg",
        description: str = "",
        secret: str | None = None,
    ) -> dict[str, Any]:
        """Subscribe ``url`` to events; the answer's ``secret`` (signing key) is shown once."""
        body = {
            "url": url,
            "event_types": list(event_types),
            "models": list(models),
            "payload_format": payload_format,
            "description": description,
            "secret": secret,
        }
        return await self._write("POST", "/api/v1/webhooks", body, kind=dict[str, Any])

    async def list_webhooks(self) -> list[dict[str, Any]]:
        return await self._get("/api/v1/webhooks", list[dict[str, Any]], consistent=False)

    async def get_webhook(self, subscription_id: str) -> dict[str, Any]:
        return await self._get(f"/api/v1/webhooks/{seg(subscription_id)}", dict[str, Any])

    async def webhook_deliveries(
        self,
        subscription_id: str,
        *,
        status: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """The delivery log, newest first (``before``: a log position, for the next page)."""
        params: Params = {"status": status, "before": before, "limit": limit}
        return await self._get(
            f"/api/v1/webhooks/{seg(subscription_id)}/deliveries",
            list[dict[str, Any]],
            {k: v for k, v in params.items() if v is not None},
            consistent=False,
        )

    async def webhook_delivery(self, subscription_id: str, position: int) -> dict[str, Any]:
        """One delivery with every attempt."""
        return await self._get(
            f"/api/v1/webhooks/{seg(subscription_id)}/deliveries/{position}",
            dict[str, Any],
            consistent=False,
        )

    async def redeliver_webhook(self, subscription_id: str, position: int) -> dict[str, Any]:
        """Send a delivered or dead-lettered event again (same ``webhook-id``)."""
        return await self._write(
            "POST",
            f"/api/v1/webhooks/{seg(subscription_id)}/deliveries/{position}/redeliver",
            kind=dict[str, Any],
        )

    async def delete_webhook(self, subscription_id: str, reason: str = "") -> Receipt:
        return await self._write(
            "DELETE", f"/api/v1/webhooks/{seg(subscription_id)}", params={"reason": reason}
        )

    # ------------------------------------------------------------------ read-your-writes

    async def wait_for(
        self, position: int | None = None, *, model: str | None = None, timeout: float = 30.0
    ) -> int:
        """Block until the registry's views show log position ``position`` (default: this
        client's latest write); returns it. Without ``model`` this waits for the views
        searches and promotion lists read; with it, also that model's timeline, metrics
        and deployments. Raises ``ServerError`` (503, ``not_yet_visible``) after ``timeout``.

        A ``Client`` already reads its own writes; this is for handing a position to
        someone else (another process, a CI step) that must see what was written.
        """
        target = position if position is not None else self._transport.last_position
        if not target:
            return 0
        probes: list[tuple[str, Params]] = [
            ("/api/v1/models", {"limit": 1}),
            ("/api/v1/promotions", {"state": "mine"}),
            ("/api/v1/audit/actors/-", {"limit": 1}),
        ]
        if model is not None:
            probes += [
                (f"{model_path(model)}/timeline", {"stage": "production"}),
                (f"{model_path(model)}/deployments", {"environment": "-"}),
                (f"{model_path(model)}/compare", {"versions": "1"}),
            ]
        clock = _Deadline(timeout)
        for path, params in probes:
            while True:
                try:
                    await self._transport.send(
                        "GET", path, params={**params, "min_position": target}
                    )
                    break
                except ServerError as exc:
                    if exc.code != "not_yet_visible" or clock.expired():
                        raise
        return target


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def expired(self) -> bool:
        return time.monotonic() >= self.end
