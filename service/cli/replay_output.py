"""What ``modelreg audit replay`` prints: the registry, or one model, as it stood at a log
position; as JSON documents and as tables. Pure (formatting only)."""

from __future__ import annotations

import msgspec
from rich.console import Group, RenderableType

from events.stages import Stage
from projections.registry_state import ModelSnapshot, RegistrySnapshot
from projections.views.approvals import ApprovalRequest
from projections.views.deployments import Place
from projections.views.model_versions import VersionRow
from service.cli.output import table, when

# The order people read stages in: what serves first.
_STAGES = (Stage.PRODUCTION, Stage.STAGING, Stage.DEVELOPMENT, Stage.ARCHIVED)


def _stage_lists(versions: list[VersionRow]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {str(s): [] for s in _STAGES}
    for v in versions:
        found.setdefault(str(v.stage), []).append(v.version)
    return {stage: sorted(numbers) for stage, numbers in found.items()}


def registry_document(snapshot: RegistrySnapshot) -> dict[str, object]:
    names = {m.model_id: m.name for m in snapshot.models}
    return {
        "position": snapshot.position,
        "sealed_at": snapshot.sealed_at,
        "models": [
            {
                "model_id": m.model_id,
                "name": m.name,
                "archived": m.archived,
                "latest_version": m.latest_version,
                "stages": _stage_lists([v for v in snapshot.versions if v.model_id == m.model_id]),
                "aliases": m.aliases,
            }
            for m in sorted(snapshot.models, key=lambda m: m.name)
        ],
        "open_requests": [
            {"model": names.get(r.model_id), **msgspec.to_builtins(r)}
            for r in snapshot.open_requests
        ],
        "deployments": [
            {"model": names.get(p.model_id), **msgspec.to_builtins(p)} for p in snapshot.deployments
        ],
    }


def model_document(snapshot: ModelSnapshot) -> dict[str, object]:
    return {
        "position": snapshot.position,
        "sealed_at": snapshot.sealed_at,
        "model": snapshot.model,
        "stages": _stage_lists(snapshot.versions),
        "versions": [
            {
                "version": v.version,
                "stage": v.stage,
                "aliases": v.aliases,
                "deprecated": v.deprecated,
                "content_digest": v.content_digest,
                "registered_by": v.registered_by,
                "created_at": v.created_at,
            }
            for v in snapshot.versions
        ],
        "timeline": snapshot.timeline,
        "requests": snapshot.requests,
        "deployments": snapshot.deployments,
        "runs": snapshot.runs,
    }


def _when(snapshot: RegistrySnapshot | ModelSnapshot) -> str:
    sealed = f", sealed {when(snapshot.sealed_at)} UTC" if snapshot.sealed_at else ""
    return f"as of log position {snapshot.position:,}{sealed}"


def registry_tables(snapshot: RegistrySnapshot) -> Group:
    names = {m.model_id: m.name for m in snapshot.models}
    models = table(
        "model", *(str(s) for s in _STAGES), "aliases", title="models (versions per stage)"
    )
    for m in sorted(snapshot.models, key=lambda m: m.name):
        stages = _stage_lists([v for v in snapshot.versions if v.model_id == m.model_id])
        models.add_row(
            m.name + (" (archived)" if m.archived else ""),
            *(_versions(stages[str(s)]) for s in _STAGES),
            _aliases(m.aliases),
        )
    return Group(
        f"Registry {_when(snapshot)}: {len(snapshot.models)} models, {len(snapshot.versions)} versions",
        models,
        _requests(snapshot.open_requests, names, "open promotion requests"),
        _places(snapshot.deployments, names),
    )


def model_tables(snapshot: ModelSnapshot) -> Group:
    assert snapshot.model is not None
    m = snapshot.model
    versions = table(
        "version",
        "stage",
        "aliases",
        "since (UTC)",
        "registered by",
        "content digest",
        title="versions",
    )
    for v in snapshot.versions:
        versions.add_row(
            f"v{v.version}",
            str(v.stage) + (" (deprecated)" if v.deprecated else ""),
            ", ".join(v.aliases) or "-",
            when(v.stage_since),
            v.registered_by,
            v.content_digest,
        )
    names = {m.model_id: m.name}
    return Group(
        f"{m.name} ({m.model_id}) {_when(snapshot)}" + (" - archived" if m.archived else ""),
        versions,
        _requests(
            [r for r in snapshot.requests if r.status == "pending"],
            names,
            "open promotion requests",
        ),
        _places(snapshot.deployments, names),
    )


def _requests(requests: list[ApprovalRequest], names: dict[str, str], title: str) -> RenderableType:
    if not requests:
        return f"{title}: none"
    listed = table(
        "model",
        "request",
        "version",
        "to",
        "requested by",
        "approvals",
        "expires (UTC)",
        title=title,
    )
    for r in requests:
        wanted = " + ".join(x for x in (r.target_stage, r.alias and f"alias {r.alias}") if x)
        listed.add_row(
            names.get(r.model_id, r.model_id),
            r.request_id,
            f"v{r.version}",
            wanted,
            r.requested_by,
            f"{len(r.approvals)}/{r.approvals_required}",
            when(r.expires_at) + (" (overdue)" if r.overdue else ""),
        )
    return listed


def _places(places: list[Place], names: dict[str, str]) -> RenderableType:
    if not places:
        return "deployments: none"
    listed = table(
        "model", "environment", "target", "follows", "desired", "live", "drift", title="deployments"
    )
    for p in places:
        listed.add_row(
            names.get(p.model_id, p.model_id),
            p.environment,
            p.target,
            p.follows or "-",
            _version(p.desired_version),
            _version(p.live_version),
            p.drift_code if not p.drift else f"{p.drift_code}: {p.drift_reason}",
        )
    return listed


def _versions(numbers: list[int]) -> str:
    return ", ".join(f"v{n}" for n in numbers) or "-"


def _version(number: int | None) -> str:
    return "-" if number is None else f"v{number}"


def _aliases(aliases: dict[str, int]) -> str:
    return ", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items())) or "-"
