"""The OpenAPI document and its viewers, with the viewers' scripts and styles served from
the package (service/api/static), so ``/schema`` works offline and asks no CDN.

    /schema, /schema/redoc        Redoc
    /schema/swagger               Swagger UI
    /schema/openapi.json|.yaml    the document
    /schema/static/...            the vendored assets (static/README.md says which)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from litestar import Controller, Router
from litestar.datastructures import CacheControlHeader
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import (
    JsonRenderPlugin,
    RedocRenderPlugin,
    SwaggerRenderPlugin,
    YamlRenderPlugin,
)
from litestar.openapi.spec import Components, SecurityScheme
from litestar.static_files import create_static_files_router

from service.api.problems import PROBLEM_JSON, Problem

STATIC = Path(__file__).parent / "static"
ASSETS = "/schema/static"
_SWAGGER = f"{ASSETS}/swagger-ui"
# Litestar's default favicon comes from a CDN too.
_FAVICON = f"<link rel='icon' type='image/png' href='{_SWAGGER}/favicon-32x32.png'>"

# Every API route takes a bearer token; the document says so, so clients and schemathesis
# send one.
BEARER = "bearerAuth"
SECURITY: list[dict[str, list[str]]] = [{BEARER: []}]
# What any API operation may answer besides its success, all as problem+json.
_PROBLEMS = {
    400: "Malformed request: a field or parameter breaks its type or format",
    401: "No usable bearer token",
    403: "The token lacks the permission",
    404: "Not found",
    409: "Conflict with the current state or the governance policy",
    412: "If-Match does not match the current version",
    413: "The request body is larger than the cap",
    415: "The body is not sent as application/json",
    422: "A value breaks a rule of the registry",
    429: "Too many expensive (as_of) reads for this token (Retry-After)",
    503: "Not ready, or the views have not caught up yet (Retry-After)",
}


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="modelreg",
        version=package_version(),
        path="/schema",
        components=Components(
            security_schemes={
                BEARER: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="A token secret: Authorization: Bearer <secret>",
                )
            }
        ),
        # The first viewer is also served at /schema itself.
        render_plugins=[
            RedocRenderPlugin(
                js_url=f"{ASSETS}/redoc/redoc.standalone.js", google_fonts=False, favicon=_FAVICON
            ),
            SwaggerRenderPlugin(
                js_url=f"{_SWAGGER}/swagger-ui-bundle.js",
                css_url=f"{_SWAGGER}/swagger-ui.css",
                standalone_preset_js_url=f"{_SWAGGER}/swagger-ui-standalone-preset.js",
                favicon=_FAVICON,
            ),
            JsonRenderPlugin(),
            YamlRenderPlugin(),
        ],
    )


def assets_router() -> Router:
    """The viewers' assets; public, like the document. They change only with a release."""
    return create_static_files_router(
        path=ASSETS,
        directories=[STATIC],
        name="openapi-assets",
        cache_control=CacheControlHeader(public=True, max_age=24 * 3600),
        include_in_schema=False,
    )


def openapi_app_kwargs() -> dict[str, Any]:
    """What a Litestar app needs to serve the document and its viewers."""
    return {"openapi_config": openapi_config(), "route_handlers": [assets_router()]}


def package_version() -> str:
    try:
        return version("modelreg")
    except PackageNotFoundError:
        return "0+unknown"


def document_problems(controllers: list[type[Controller]]) -> None:
    """Declare the problem+json answers on every operation of ``controllers``, in place of
    Litestar's default 400 body (which this API never sends). Idempotent."""
    problems = {
        status: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_JSON,
            description=description,
            generate_examples=False,
        )
        for status, description in _PROBLEMS.items()
    }
    for controller in controllers:
        for name in dir(controller):  # inherited handlers too (/metrics)
            value = getattr(controller, name)
            if isinstance(value, HTTPRouteHandler):
                value.responses = {**problems, **(value.responses or {})}
