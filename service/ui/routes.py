"""The UI's pages. I/O: through the JSON API's own handlers.

Every read and write calls the handler function of the JSON API route that answers the
same question (``Controller.handler.fn``), with the same request: the same ``require``
checks, scope filters, views and commands run, so the UI cannot show or do anything the
API would refuse to the same token. The one difference is deliberate: a model outside the
reader's scope answers 404 here, exactly like a model that does not exist.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from litestar import Controller, Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, FromQuery, QueryParameter
from litestar.response import Redirect, Template

from eventlog.freshness import freshness
from eventlog.keys import model_names
from events.errors import NotFoundError, ValidationError
from events.names import validate_stage_name
from events.stages import Stage, placement
from projections.views.approvals import ApprovalRequest
from projections.views.metric_history import Comparison
from service.api.common import MAX_POSITION, principal_of, representable_time, services_of
from service.api.problems import PermissionDeniedError
from service.api.routes_access import AccessController
from service.api.routes_artifacts import ArtifactsController
from service.api.routes_gates import GatesController
from service.api.routes_governance import LifecycleController, PromotionsController
from service.api.routes_models import ModelsController
from service.api.routes_operations import AuditController, DeploymentsController
from service.api.routes_versions import CompareController, VersionsController
from service.api.schemas import Decision
from service.api.subject_names import actor_ids
from service.commands.gate_check import GateCheck
from service.commands.tokens import InvalidTokenError
from service.identity.flows import FLOW_SECONDS, FlowSeal, ProviderFlows, SignInRefusedError
from service.ui.charts import Line, bar_chart, line_chart
from service.ui.forms import DecisionForm, LoginForm, SearchForm
from service.ui.session import FLOW_COOKIE, flow_cookie, is_https, log_in, log_out
from service.ui.version_rows import version_rows

T = TypeVar("T")
PUBLIC = {"public": True}
# Key metrics in the versions table: the first few, so the table stays readable.
KEY_METRICS = 4
TIMELINE_ROWS = 30
CHART_POINTS = 1000  # per metric chart
# The inbox weighs (gate check, diff against production) this many requests at most.
REVIEWED_REQUESTS = 50


async def _visible(name: str, read: Awaitable[T], *, what: str = "") -> T:
    """``read`` (or write) of model ``name``; out of the caller's scope it answers as if the
    model (or ``what``) did not exist. A permission the caller's role lacks stays a 403."""
    try:
        return await read
    except PermissionDeniedError as exc:
        if exc.scope is None or not exc.scope.startswith("model "):
            raise
        raise NotFoundError(what or f"model {name!r} does not exist") from None


def page(request: Request[Any, Any, Any], template: str, **context: Any) -> Template:
    return Template(
        template_name=template,
        context={"principal": principal_of(request), "path": request.url.path, **context},
    )


class LoginController(Controller):
    path = "/ui"

    @get("/login", opt=PUBLIC)
    async def login_form(
        self, request: Request[Any, Any, Any], next_page: Annotated[str, FromQuery] = "/ui/"
    ) -> Template:
        return _login_page(request, _local(next_page))

    @post("/login", opt=PUBLIC, status_code=303)
    async def login(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[LoginForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    ) -> Response[Any]:
        try:
            await services_of(request).auth.authenticate(data.token.strip())
        except InvalidTokenError:
            return _login_page(
                request, _local(data.next), error="That token is not valid.", status_code=401
            )
        response: Response[Any] = Redirect(_local(data.next), status_code=303)
        log_in(request, response, data.token.strip())
        return response

    @get("/login/oidc", opt=PUBLIC)
    async def login_with_provider(
        self, request: Request[Any, Any, Any], next_page: Annotated[str, FromQuery] = "/ui/"
    ) -> Response[Any]:
        """Off to the identity provider's login page, with the flow's secrets in a cookie."""
        flows = _flows(request)
        target, flow = await flows.start(_redirect_uri(request, flows), _local(next_page))
        response: Response[Any] = Redirect(target, status_code=303)
        response.set_cookie(flow_cookie(request, request.app.state.ui_flow_seal.seal(flow)))
        return response

    @get("/login/oidc/callback", opt=PUBLIC)
    async def provider_callback(
        self,
        request: Request[Any, Any, Any],
        # "state" is a name Litestar reserves for the app's state.
        returned_state: Annotated[str, QueryParameter(name="state")] = "",
        code: Annotated[str, FromQuery] = "",
        error: Annotated[str, FromQuery] = "",
        error_description: Annotated[str, FromQuery] = "",
    ) -> Response[Any]:
        """Back from the provider: the code becomes a session, or a page says why not."""
        flows = _flows(request)
        seal: FlowSeal = request.app.state.ui_flow_seal
        flow = seal.open(request.cookies.get(FLOW_COOKIE, ""))
        try:
            if flow is None:
                raise SignInRefusedError(
                    400,
                    "This sign-in was not started in this browser, or took longer than"
                    f" {FLOW_SECONDS // 60} minutes. Start again.",
                )
            if not returned_state or not secrets.compare_digest(returned_state, flow.state):
                raise SignInRefusedError(
                    400, "state: does not match the sign-in this browser started. Start again."
                )
            if error:
                reason = f"{error}" + (f": {error_description}" if error_description else "")
                raise SignInRefusedError(
                    403 if error == "access_denied" else 400,
                    f"{flows.config.provider_name} did not sign you in ({reason}).",
                )
            if not code:
                raise SignInRefusedError(400, "code: the provider sent no authorization code.")
            token = await flows.finish(flow, code, services_of(request).registry.now())
            await services_of(request).auth.authenticate(token)
        except (SignInRefusedError, InvalidTokenError) as exc:
            status = exc.status if isinstance(exc, SignInRefusedError) else 401
            refused: Response[Any] = Template(
                template_name="error.html",
                context={"status": status, "title": "Sign-in refused", "detail": str(exc)},
                status_code=status,
            )
            # One try per flow: a refused callback cannot be retried with the same cookie.
            refused.set_cookie(flow_cookie(request, "", max_age=0))
            return refused
        # A page, not a redirect: the session cookie is SameSite=Strict, and a browser
        # that arrived here from the provider's site would not send it on a redirect
        # chain that began there. Navigating on from this page is same-site.
        response: Response[Any] = Template(
            template_name="signed_in.html", context={"next": flow.next}
        )
        log_in(request, response, token)
        response.set_cookie(flow_cookie(request, "", max_age=0))
        return response

    @post("/logout", status_code=303)
    async def logout(self, request: Request[Any, Any, Any]) -> Response[Any]:
        response: Response[Any] = Redirect("/ui/login", status_code=303)
        log_out(request, response)
        return response


def _login_page(
    request: Request[Any, Any, Any], next_page: str, *, error: str = "", status_code: int = 200
) -> Template:
    flows = services_of(request).auth.flows
    return Template(
        template_name="login.html",
        context={
            "next": next_page,
            "error": error,
            "provider": flows.config.provider_name if flows else None,
        },
        status_code=status_code,
    )


def _flows(request: Request[Any, Any, Any]) -> ProviderFlows:
    flows = services_of(request).auth.flows
    if flows is None:
        raise NotFoundError(
            "sign-in through an identity provider is not configured"
            " (MODELREG_OIDC_ISSUER and MODELREG_OIDC_CLIENT_ID)"
        )
    return flows


def _redirect_uri(request: Request[Any, Any, Any], flows: ProviderFlows) -> str:
    if flows.config.redirect_url:
        return flows.config.redirect_url
    base = str(request.base_url).rstrip("/")
    if is_https(request) and base.startswith("http://"):
        base = "https://" + base.removeprefix("http://")
    return f"{base}/ui/login/oidc/callback"


def _local(target: str) -> str:
    """Only a path inside the UI: a login link must not send people to another site."""
    return target if target.startswith("/ui/") and not target.startswith("/ui//") else "/ui/"


class PagesController(Controller):
    path = "/ui"

    @get("/")
    async def models(
        self,
        request: Request[Any, Any, Any],
        q: FromQuery[str] = "",
        tag: FromQuery[str] = "",
        stage: FromQuery[str] = "",
        alias: FromQuery[str] = "",
        owner: FromQuery[str] = "",
        metric: FromQuery[str] = "",
        as_of: FromQuery[str] = "",
        cursor: FromQuery[str] = "",
    ) -> Template:
        form = SearchForm(
            q=q,
            tag=tag,
            stage=stage,
            alias=alias,
            owner=owner,
            metric=metric,
            as_of=as_of,
            cursor=cursor,
        )
        found = await ModelsController.search.fn(
            None,
            request,
            q=form.q or None,
            tag=[form.tag] if form.tag else None,
            stage=[_stage(form.stage)] if form.stage else None,
            alias=form.alias or None,
            owner=form.owner or None,
            metric=[form.metric] if form.metric else None,
            archived=False,
            order_by="name",
            cursor=form.cursor or None,
            limit=50,
            as_of=form.as_of or None,
            min_position=None,
        )
        # The registry policy's stages, then the default four (models may keep their own).
        registry_policy = await services_of(request).registry.registry_policy()
        stages = list(dict.fromkeys([*registry_policy.stage_names(), *(str(s) for s in Stage)]))
        shown = [s for s in stages if s != registry_policy.initial() and s != Stage.ARCHIVED]
        return page(
            request, "models.html", form=form, page=found, stages=stages, shown_stages=shown
        )

    @get("/models/{name:str}")
    async def model(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        as_of: FromQuery[str] = "",
        cursor: FromQuery[str] = "",
    ) -> Template:
        """The model (as it stood ``as_of`` a past position or time, if given); its versions
        a page at a time, newest first."""
        when = as_of or None
        read = ModelsController.read.fn(None, request, name=name, as_of=when)
        row = (await _visible(name, read)).content
        versions = await VersionsController.search.fn(
            None,
            request,
            name=name,
            order_by="-version",
            cursor=cursor or None,
            limit=100,
            as_of=when,
        )
        # Who put which version in staging, production or archived: every registration
        # also enters development, and a model with thousands of versions would list
        # thousands of those. The latest changes, newest first; the audit page has them all.
        policy = (await LifecycleController.read_policy.fn(None, request, name=name)).content
        # Every stage but the initial one (each registration enters it), whatever the
        # policy calls them; then the default four, which older history may hold.
        # A stage with environments also has one interval per environment (production@eu).
        placed = [placement(d.name, e) for d in policy.stages for e in d.environment_names()]
        timeline_stages = [
            s
            for s in dict.fromkeys(
                [*(d.name for d in policy.stages), *placed, *(str(s) for s in Stage)]
            )
            if s != policy.initial_stage
        ]
        timeline = await LifecycleController.timeline.fn(
            None, request, name=name, stage=timeline_stages
        )
        recent = sorted(timeline, key=lambda t: t.from_position, reverse=True)[:TIMELINE_ROWS]
        places = await DeploymentsController.places.fn(None, request, name=name, as_of=when)
        metric_keys = sorted({(m.key, m.dataset) for v in versions.items for m in v.metrics})
        templates = request.app.template_engine.engine  # type: ignore[union-attr]
        base = "/ui/models/" + templates.filters["urlencode"](row.name)
        rows = version_rows(templates, versions.items, metric_keys[:KEY_METRICS], base)
        return page(
            request,
            "model.html",
            model=row,
            versions=versions,
            timeline=recent,
            places=places,
            timeline_total=len(timeline),
            timeline_stages=timeline_stages,
            policy=policy,
            metric_keys=metric_keys[:KEY_METRICS],
            rows=rows,
            as_of=as_of,
        )

    @get("/models/{name:str}/versions/{version:int}")
    async def version(
        self, request: Request[Any, Any, Any], name: FromPath[str], version: FromPath[int]
    ) -> Template:
        row = (
            await _visible(
                name, VersionsController.read.fn(None, request, name=name, version=version)
            )
        ).content
        # Every metric's history in one query, a chart each.
        histories = await VersionsController.histories.fn(
            None, request, name=name, version=version, limit=CHART_POINTS
        )
        charts = []
        for one in histories:
            label = one.series.key + (f" [{one.series.dataset}]" if one.series.dataset else "")
            charts.append(
                line_chart(label, [Line(label, [(s.step, s.value) for s in one.samples])])
            )
        series = [h.series for h in histories]
        return page(
            request,
            "version.html",
            version=row,
            series=series,
            charts=charts,
            chart_points=CHART_POINTS,
        )

    @get("/models/{name:str}/versions/{version:int}/files/{file_path:path}")
    async def download(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        version: FromPath[int],
        file_path: FromPath[str],
    ) -> Any:
        """A file of the version: the API's download (verified on the way out, ranges)."""
        return await _visible(
            name,
            ArtifactsController.download.fn(
                None, request, name=name, ref=str(version), file_path=file_path
            ),
        )

    @get("/models/{name:str}/compare")
    async def compare(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        versions: Annotated[str, FromQuery] = "",
        v: Annotated[list[int] | None, FromQuery] = None,
        with_production: FromQuery[bool] = False,
    ) -> Template:
        # The model page's checkboxes send v=1&v=2; the text field sends versions=1,2.
        versions = ",".join([*([versions] if versions.strip() else []), *map(str, v or ())])
        row = (await _visible(name, ModelsController.read.fn(None, request, name=name))).content
        production = row.stages.get("production")
        if with_production and production is not None:
            # An approver's "what changes?": the requested version beside production.
            versions = ",".join([versions, str(production)]) if versions else str(production)
        versions = ",".join(dict.fromkeys(n.strip() for n in versions.split(",") if n.strip()))
        comparison = None
        charts: list[str] = []
        best: dict[tuple[str, str], int | None] = {}
        if versions.strip():
            comparison = await CompareController.compare.fn(
                None, request, name=name, versions=versions
            )
            for metric in comparison.metrics:
                present = [
                    (f"v{n}", v)
                    for n, v in zip(comparison.versions, metric.values, strict=True)
                    if v is not None
                ]
                label = metric.key + (f" [{metric.dataset}]" if metric.dataset else "")
                charts.append(bar_chart(label, present))
                best[(metric.key, metric.dataset)] = _best(
                    comparison.versions, metric.values, metric.key
                )
        return page(
            request,
            "compare.html",
            name=name,
            versions=versions,
            comparison=comparison,
            charts=charts,
            best=best,
        )

    @get("/approvals")
    async def approvals(
        self,
        request: Request[Any, Any, Any],
        done: FromQuery[str] = "",
        position: Annotated[int | None, QueryParameter(ge=0, le=MAX_POSITION)] = None,
    ) -> Template:
        """Requests waiting for me and all open ones, each with what an approver weighs: the
        gate check the API's dry run answers now, and the diff against production. After a
        decision, read-your-writes: the lists wait (bounded) until the views show it."""
        mine = await PromotionsController.list_requests.fn(
            None, request, which="mine", min_position=position
        )
        waiting = await PromotionsController.list_requests.fn(None, request, which="open")
        mine_ids = {r.request_id for r in mine}
        others = [r for r in waiting if r.request_id not in mine_ids]
        # One query names every model shown (the lists are already cut to the scope).
        names = await model_names(services_of(request).pool, {r.model_id for r in waiting + mine})
        shown = [*mine, *others][:REVIEWED_REQUESTS]
        reviews = await _reviews(request, shown, names)
        return page(
            request,
            "approvals.html",
            mine=mine,
            others=others,
            names=names,
            done=done,
            reviews=reviews,
            reviewed=REVIEWED_REQUESTS,
            # Every id the viewer is recorded under (their name, their subject id).
            me=await actor_ids(services_of(request), principal_of(request).name),
        )

    @post("/approvals/{request_id:str}", status_code=303)
    async def decide(
        self,
        request: Request[Any, Any, Any],
        request_id: FromPath[str],
        data: Annotated[DecisionForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    ) -> Response[Any]:
        handler = (
            PromotionsController.approve
            if data.decision == "approve"
            else PromotionsController.reject
        )
        # A request on a model outside the approver's scope does not exist for it.
        written = await _visible(
            request_id,
            handler.fn(None, request, request_id=request_id, data=Decision(comment=data.comment)),
            what=f"no promotion request {request_id!r}",
        )
        position = written.content.position
        return Redirect(
            f"/ui/approvals?done={request_id}&position={position or 0}", status_code=303
        )

    @get("/audit")
    async def audit(
        self,
        request: Request[Any, Any, Any],
        model: FromQuery[str] = "",
        actor: FromQuery[str] = "",
        type: FromQuery[str] = "",
        since: FromQuery[str] = "",
        until: FromQuery[str] = "",
        as_of: FromQuery[str] = "",
        cursor: Annotated[int | None, QueryParameter(ge=0, le=MAX_POSITION)] = None,
        verify: FromQuery[bool] = False,
    ) -> Template:
        """A model's events or everything one actor did, filtered by type and business time
        (``since <= occurred_at < until``), as the registry stood ``as_of`` a past position or
        time; the hash-chain check on request (it reads the whole log)."""
        start, end = _moment(since, "since"), _moment(until, "until")
        if start is not None and end is not None and end <= start:
            raise ValidationError("until", "after_since", "until must be later than since")
        feed = None
        types = [type] if type else None
        if model:
            feed = await _visible(
                model,
                AuditController.history.fn(
                    None,
                    request,
                    name=model,
                    actor=actor or None,
                    type=types,
                    since=start,
                    until=end,
                    cursor=cursor,
                    limit=100,
                    as_of=as_of or None,
                ),
            )
        elif actor:
            feed = await AuditController.by_actor.fn(
                None,
                request,
                actor=actor,
                type=types,
                since=start,
                until=end,
                cursor=cursor,
                limit=100,
                as_of=as_of or None,
            )
        report = await AuditController.verify_chains.fn(None, request) if verify else None
        filters = {
            "model": model,
            "actor": actor,
            "type": type,
            "since": since,
            "until": until,
            "as_of": as_of,
        }
        return page(request, "audit.html", feed=feed, report=report, filters=filters)

    @get("/access")
    async def access(self, request: Request[Any, Any, Any], as_of: FromQuery[str] = "") -> Template:
        """Who holds which role on which models, now or as the grants stood at a past log
        position or time (admins: the API route decides)."""
        view = await AccessController.grants.fn(None, request, as_of=as_of or None)
        return page(request, "access.html", view=view, filters={"as_of": as_of})

    @get("/position", media_type="application/json")
    async def position(self, request: Request[Any, Any, Any]) -> dict[str, int]:
        """The log's head, for the page script to notice new events (live updates)."""
        now = await freshness(services_of(request).pool, [])
        return {"position": now.head}


@dataclass(frozen=True)
class Review:
    """What an approver weighs for one request: ``gate``, the API's dry run of the move
    (None for an alias-only request or a rollback, which has no gates); ``production`` and
    ``diff``, the version beside the one in production (None when there is none, or it is
    the version asked for)."""

    gate: GateCheck | None
    production: int | None
    diff: Comparison | None


async def _reviews(
    request: Request[Any, Any, Any], shown: list[ApprovalRequest], names: dict[str, str]
) -> dict[str, Review]:
    productions: dict[str, int | None] = {}
    reviews: dict[str, Review] = {}
    for r in shown:
        name = names.get(r.model_id)
        if name is None:  # renamed or gone since the list was read: nothing to weigh
            continue
        if name not in productions:
            row = (await ModelsController.read.fn(None, request, name=name)).content
            productions[name] = row.stages.get(Stage.PRODUCTION.value)
        production = productions[name]
        gate = None
        if r.target_stage is not None and not r.rollback:
            try:
                gate = await GatesController.check.fn(
                    None, request, name=name, version=r.version, to=r.target_stage
                )
            except ValidationError:
                gate = None  # the policy no longer defines the stage: approving will say so
        diff = None
        if production is not None and production != r.version:
            diff = await CompareController.compare.fn(
                None, request, name=name, versions=f"{r.version},{production}"
            )
        reviews[r.request_id] = Review(gate=gate, production=production, diff=diff)
    return reviews


def _best(versions: tuple[int, ...], values: tuple[float | None, ...], key: str) -> int | None:
    """The version with the best value; lower is better for losses and errors."""
    present = [(v, n) for n, v in zip(versions, values, strict=True) if v is not None]
    if not present:
        return None
    lower = any(word in key.lower() for word in ("loss", "error", "rmse", "mae", "mse"))
    return (min(present) if lower else max(present))[1]


def _moment(text: str, field: str) -> datetime | None:
    """A time from the audit form: RFC 3339, or a date and time without a zone (a browser's
    datetime-local field), read as UTC; empty: no bound."""
    text = text.strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)  # also a date alone: its midnight
    except ValueError:
        raise ValidationError(
            field, "pattern", f"{field} is a date and time, e.g. 2026-03-03T14:03:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return representable_time(moment, field)


def _stage(text: str) -> str:
    return validate_stage_name(text)
