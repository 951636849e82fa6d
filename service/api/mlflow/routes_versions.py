"""``/api/2.0/mlflow/model-versions/*``: MLflow's model-version RPCs as modelreg commands.

* create records MLflow's ``source`` as the version's one external artifact (path
  ``mlflow-source``; MLflow sends no digest, so the entry's sha256 is that of the URI text
  and its size 0: a reference, not a pin of the bytes) and ``run_id``/``run_link`` as its
  run. Numbers are the highest ever registered plus one, decided on the model's stream:
  concurrent creates take turns and never leave a gap nor reuse a number.
* transition-stage is modelreg's governed transition: when the policy wants approval it
  opens a promotion request and answers PERMISSION_DENIED naming it.
  ``archive_existing_versions`` archives the other versions in the target stage in the
  same decision: all of it happens, or (refused) none.
* delete archives the version (through the same governance) and deprecates it: MLflow
  callers no longer see it, its number is never given again, its history stays.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import FromQuery, JSONBody, QueryParameter

from events.access import Permission
from events.errors import NotFoundError, PolicyViolationError, ValidationError
from events.mlflow_artifacts import mlflow_source
from events.mlflow_filter import Target
from events.mlflow_stages import ACTIVE_STAGES, stage_from_mlflow, stage_to_mlflow
from events.model.commands import (
    DeprecateVersion,
    RegisterVersion,
    RemoveVersionTags,
    SetVersionTags,
    UpdateVersionDescription,
)
from events.model.events import VersionRegistered
from events.model.state import ModelState, VersionState
from events.policy import GovernancePolicy
from events.stages import Stage
from events.version_content import ArtifactEntry, RunReference, VersionContent, validate_content
from projections.mlflow_views import MlflowVersion, get_version, micros, search_versions
from service.api.auth import require
from service.api.common import principal_of, seed_of, services_of
from service.api.mlflow import wire
from service.api.mlflow.retries import derived_seeds
from service.api.mlflow.routes_models import NameQuery, page_size
from service.api.mlflow.shared import (
    DELETED_REASON,
    VIEW_NAMES,
    live_model,
    live_version,
    named_version_row,
    no_model,
    searched,
    version_answer,
)
from service.api.services import Services
from service.commands.registry import Written
from service.commands.tokens import Principal

SOURCE_PATH = "mlflow-source"
# MLflow accepts up to 200,000 versions in one answer; one page here holds at most
# PAGE_CAP, with a next_page_token for the rest (which MLflow's clients follow).
MAX_VERSION_RESULTS = 200_000
PAGE_CAP = 10_000
VersionQuery = Annotated[str, QueryParameter(name="version", min_length=1)]


class ApprovalRequiredError(PolicyViolationError):
    """The policy wants approval for this move: a promotion request was opened instead."""

    def __init__(self, name: str, version: int, stage: Stage, request_id: str) -> None:
        super().__init__(
            "approval_required",
            f"moving version {version} of {name!r} to {stage_to_mlflow(stage)} needs approval"
            f" under modelreg's governance policy: promotion request {request_id} was opened;"
            f" once approved (POST /api/v1/promotions/{request_id}/approve) the move happens",
            request_id=request_id,
            version=version,
            stage=stage_to_mlflow(stage),
        )


def source_uri(source: str) -> str:
    """MLflow's ``source`` as an absolute URI: a bare absolute path becomes ``file://``."""
    text = source.strip()
    if text.startswith("/"):
        return "file://" + text
    return text


def _content(data: wire.CreateModelVersion) -> VersionContent:
    if not data.source.strip():
        raise ValidationError("source", "required", "source must not be empty")
    uri = source_uri(data.source)
    entry = ArtifactEntry(
        path=SOURCE_PATH,
        uri=uri,
        sha256=hashlib.sha256(uri.encode()).hexdigest(),
        size=0,
        external=True,
    )
    run = (
        RunReference(run_id=data.run_id, url=data.run_link, tracker="mlflow")
        if data.run_id
        else None
    )
    content = VersionContent(artifacts=(entry,), run=run)
    try:
        validate_content(content)
    except ValidationError as exc:
        # Name the MLflow field, not the manifest path it was recorded under.
        field = {"content.artifacts[0].uri": "source", "content.run.url": "run_link"}.get(
            exc.field, "run_id" if exc.field.startswith("content.run") else exc.field
        )
        raise ValidationError(field, exc.rule, exc.message.replace(exc.field, field)) from None
    return content


def _number(written: Written) -> int:
    registered = [e for e in written.events if isinstance(e, VersionRegistered)]
    return registered[0].version


def _registered(written: Written, name: str, at: datetime) -> wire.ModelVersion:
    """A version as its registration recorded it, at ``at``: what the views will show."""
    number = _number(written)
    state: ModelState = written.state
    version = state.versions[number]
    entry = version.content.artifacts[0]
    run = version.content.run
    row = MlflowVersion(
        model_id=written.model_id,
        name=name,
        version=number,
        stage=version.stage,
        aliases=version.aliases,
        description=version.description,
        tags=version.tags,
        registered_by=version.registered_by,
        created_us=micros(at),
        updated_us=micros(at),
        source=entry.uri,
        run_id=run.run_id if run else "",
        run_link=run.url if run else "",
        deleted=False,
    )
    return wire.model_version(row)


class ModelVersionsController(Controller):
    path = "/model-versions"

    @post("/create", status_code=200)
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[wire.CreateModelVersion]
    ) -> wire.ModelVersionAnswer:
        principal = principal_of(request)
        require(principal, Permission.WRITE, data.name)
        services = services_of(request)
        registry = services.registry
        content = _content(data)
        seed, previous = seed_of(request), None
        if seed is None:
            seed, previous = derived_seeds(principal.name, request.url.path, data, registry.now())
        now = registry.now()

        def build(registry_policy: GovernancePolicy) -> RegisterVersion:
            return RegisterVersion(
                actor=principal.name,
                now=now,
                content=content,
                description=data.description,
                tags=wire.tags_of(data.tags),
                registry_policy=registry_policy,
            )

        # A retry of a create recorded under this window's seed or the previous one's is
        # answered with what it recorded (one lookup for both, with the create's turn).
        # Registry.on_named skips looking the name up when this process remembers its model;
        # every try decides only for a live model that still bears the name, as MLflow sees it.
        async def create_in(model_id: str, _named: str | None) -> Written:
            return await registry.under_registry_policy(
                model_id, build, id_seed=seed, previous_seed=previous, named=data.name
            )

        try:
            written = await registry.on_named(data.name, create_in)
        except NotFoundError:  # no such name, or renamed or deleted since it was looked up
            raise no_model(data.name) from None
        if not written.replayed:
            # What it recorded is the answer: no need to wait for the views to show it.
            return wire.ModelVersionAnswer(model_version=_registered(written, data.name, now))
        return wire.ModelVersionAnswer(
            model_version=await version_answer(
                services, written.model_id, data.name, _number(written)
            )
        )

    @get("/get")
    async def read(
        self, request: Request[Any, Any, Any], name: NameQuery, version: VersionQuery
    ) -> wire.ModelVersionAnswer:
        require(principal_of(request), Permission.READ, name)
        services = services_of(request)
        number = wire.version_number(version)
        row = await named_version_row(services, name, number)
        return wire.ModelVersionAnswer(model_version=wire.model_version(row))

    @patch("/update")
    async def update(
        self, request: Request[Any, Any, Any], data: JSONBody[wire.UpdateModelVersion]
    ) -> wire.ModelVersionAnswer:
        principal, services, model_id, number, _ = await _writable(request, data.name, data.version)
        await services.registry.execute(
            model_id,
            UpdateVersionDescription(
                actor=principal.name,
                now=services.registry.now(),
                version=number,
                description=data.description,
            ),
        )
        return wire.ModelVersionAnswer(
            model_version=await version_answer(services, model_id, data.name, number)
        )

    @delete("/delete", status_code=200)
    async def remove(
        self, request: Request[Any, Any, Any], data: JSONBody[wire.VersionRef]
    ) -> wire.Empty:
        principal, services, model_id, number, version = await _writable(
            request, data.name, data.version
        )
        if version.stage != Stage.ARCHIVED:
            await _transition(
                services, principal, data.name, number, Stage.ARCHIVED, DELETED_REASON
            )
        await services.registry.execute(
            model_id,
            DeprecateVersion(
                actor=principal.name,
                now=services.registry.now(),
                version=number,
                reason=DELETED_REASON,
            ),
        )
        return wire.Empty()

    @get("/search")
    async def search(
        self,
        request: Request[Any, Any, Any],
        filter_text: Annotated[str | None, QueryParameter(name="filter")] = None,
        max_results: FromQuery[int | None] = None,
        order_by: FromQuery[list[str] | None] = None,
        page_token: FromQuery[str | None] = None,
    ) -> wire.SearchVersionsAnswer:
        """Versions of every model in scope; each carries its aliases (MLflow's do not)."""
        async with searched(
            request,
            Target.VERSIONS,
            search_versions,
            filter_text=filter_text,
            order_by=order_by,
            page_token=page_token,
            limit=min(page_size(max_results, PAGE_CAP, MAX_VERSION_RESULTS), PAGE_CAP),
        ) as (_, page, seal):
            return wire.SearchVersionsAnswer(
                model_versions=list(page.items), next_page_token=seal.seal(page.next_cursor)
            )

    @post("/set-tag", status_code=200)
    async def set_tag(
        self, request: Request[Any, Any, Any], data: JSONBody[wire.SetVersionTag]
    ) -> wire.Empty:
        principal, services, model_id, number, _ = await _writable(request, data.name, data.version)
        await services.registry.execute(
            model_id,
            SetVersionTags(
                actor=principal.name,
                now=services.registry.now(),
                version=number,
                tags={data.key: data.value},
            ),
        )
        return wire.Empty()

    @delete("/delete-tag", status_code=200)
    async def delete_tag(
        self, request: Request[Any, Any, Any], data: JSONBody[wire.DeleteVersionTag]
    ) -> wire.Empty:
        principal, services, model_id, number, _ = await _writable(request, data.name, data.version)
        await services.registry.execute(
            model_id,
            RemoveVersionTags(
                actor=principal.name,
                now=services.registry.now(),
                version=number,
                keys=(data.key,),
            ),
        )
        return wire.Empty()

    @post("/transition-stage", status_code=200)
    async def transition_stage(
        self, request: Request[Any, Any, Any], data: JSONBody[wire.TransitionStage]
    ) -> wire.ModelVersionAnswer:
        principal = principal_of(request)
        require(principal, Permission.WRITE, data.name)
        services = services_of(request)
        number = wire.version_number(data.version)
        stage = stage_from_mlflow(data.stage)
        if data.archive_existing_versions and stage not in ACTIVE_STAGES:
            raise ValidationError(
                "archive_existing_versions",
                "stage",
                "archive_existing_versions applies only to Staging and Production,"
                f" not {stage_to_mlflow(stage)}",
            )
        model_id, state = await live_model(services, data.name)
        # MLflow moves a version to its own stage without complaint: nothing to record.
        if live_version(state, data.name, number).stage != stage or data.archive_existing_versions:
            comment = f"transition-stage through the MLflow API to {stage_to_mlflow(stage)}"
            now = services.registry.now()
            written = await _transition(
                services,
                principal,
                data.name,
                number,
                stage,
                comment,
                archive_existing=data.archive_existing_versions,
                at=now,
                found=(model_id, state),
            )
            moved = None if written.replayed else await _moved(services, written, number, now)
            if moved is not None:
                return wire.ModelVersionAnswer(model_version=moved)
        return wire.ModelVersionAnswer(
            model_version=await version_answer(services, model_id, data.name, number)
        )

    @get("/get-download-uri")
    async def download_uri(
        self, request: Request[Any, Any, Any], name: NameQuery, version: VersionQuery
    ) -> wire.DownloadUri:
        """The MLflow source of an externally held version; modelreg's artifact URI
        (``mlflow-artifacts:/modelreg/models/{name}/versions/{n}``) for stored files.

        Answered from the model's state at its current stream version (one query, as the
        artifact proxy that serves the URI does), not from the views: a version's files
        never change, and the state shows a deletion as soon as it is recorded."""
        require(principal_of(request), Permission.READ, name)
        services = services_of(request)
        number = wire.version_number(version)
        _, state = await live_model(services, name)
        found = live_version(state, name, number)
        return wire.DownloadUri(
            artifact_uri=mlflow_source(state.name, number, found.content.artifacts)
        )


async def _transition(
    services: Services,
    principal: Principal,
    name: str,
    number: int,
    stage: Stage,
    comment: str,
    *,
    archive_existing: bool = False,
    at: datetime | None = None,
    found: tuple[str, ModelState] | None = None,
) -> Written:
    """A governed move (with ``archive_existing``, the archiving of the other versions in
    that stage is part of the same decision); when it needs approval, the request it
    opened is the answer."""
    written, request_id = await services.registry.transition(
        name,
        number,
        stage,
        actor=principal.name,
        comment=comment,
        archive_existing=archive_existing,
        at=at,
        found=found,
    )
    executed = any(e.event_type == "model.promotion_executed" for e in written.events)
    if request_id is not None and not executed:
        raise ApprovalRequiredError(name, number, stage, request_id)
    return written


async def _moved(
    services: Services, written: Written, number: int, at: datetime
) -> wire.ModelVersion | None:
    """The version as the move recorded it, at ``at``: what the views will show once they
    catch up, without waiting for them (as a create answers). Stage, aliases, description
    and tags come from the state the move left; the facts fixed at registration (creation
    time, source, run) from the views, which show them as soon as they show the version at
    all. None when they do not show it yet: the caller then waits for them."""
    shown = await get_version(services.pool, VIEW_NAMES, written.model_id, number)
    if shown is None:
        return None
    state: ModelState = written.state
    version = state.versions[number]
    row = msgspec.structs.replace(
        shown,
        name=state.name,
        stage=version.stage,
        aliases=tuple(sorted(version.aliases)),
        description=version.description,
        tags=version.tags,
        updated_us=micros(at),
        deleted=version.deprecated,
        model_archived=state.archived,
    )
    return wire.model_version(row)


async def _writable(
    request: Request[Any, Any, Any], name: str, version: wire.VersionText
) -> tuple[Principal, Services, str, int, VersionState]:
    """What a write to one live version starts from: the caller (with WRITE on the model),
    the services, the model's id, the version's number and its state (404 when deleted)."""
    principal = principal_of(request)
    require(principal, Permission.WRITE, name)
    services = services_of(request)
    number = wire.version_number(version)
    model_id, state = await live_model(services, name)
    return principal, services, model_id, number, live_version(state, name, number)
