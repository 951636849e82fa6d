"""What the Litestar app needs to serve the UI: its routers (pages behind the session,
CSRF and the API's request screening; static assets public) and the template engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request, Response, Router
from litestar.config.csrf import CSRFConfig
from litestar.middleware import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from service.api.problems import EXCEPTION_HANDLERS
from service.api.services import Services
from service.identity.flows import FlowSeal
from service.ui.forms import screen_form_request
from service.ui.routes import LoginController, PagesController
from service.ui.session import COOKIE, SessionKey, SessionMiddleware

HERE = Path(__file__).parent
CSRF_COOKIE = "modelreg_csrf"


def _html_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The API's answer to ``exc`` (same status, same words), as a page."""
    handler = next(EXCEPTION_HANDLERS[c] for c in type(exc).__mro__ if c in EXCEPTION_HANDLERS)
    problem = handler(request, exc)
    content = problem.content
    detail = getattr(content, "detail", "") or str(exc)
    title = getattr(content, "title", "Error")
    status = problem.status_code or 500
    return Template(
        template_name="error.html",
        context={"status": status, "title": title, "detail": detail},
        status_code=status,
    )


def ui_app_kwargs(services: Services) -> dict[str, Any]:
    """Routers for ``/ui``, the template config, and the session key for the app state."""
    csrf = CSRFConfig(
        # A key of its own from the pepper: every replica checks the tokens alike.
        secret=services.pepper.derive("ui-csrf").hex(),
        cookie_name=CSRF_COOKIE,
        cookie_path="/ui",
        cookie_samesite="strict",
        cookie_httponly=True,  # the token reaches forms through the page, not through scripts
    )
    pages = Router(
        "/",
        route_handlers=[LoginController, PagesController],
        middleware=[
            DefineMiddleware(CSRFMiddleware, config=csrf),
            DefineMiddleware(SessionMiddleware),
        ],
        before_request=screen_form_request,
        # Every class the API maps, so none of its JSON answers wins over the page.
        exception_handlers=dict.fromkeys(EXCEPTION_HANDLERS, _html_error),
        include_in_schema=False,
    )
    static = create_static_files_router(
        path="/ui/static",
        directories=[HERE / "static"],
        opt={"public": True},
        include_in_schema=False,
        cache_control=None,
    )
    return {
        "route_handlers": [pages, static],
        "template_config": TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine),
        "state": {
            "ui_session_key": SessionKey(services.pepper),
            "ui_flow_seal": FlowSeal(services.pepper),
            "ui_cookie": COOKIE,
        },
    }
