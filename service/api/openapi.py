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

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import (
    JsonRenderPlugin,
    RedocRenderPlugin,
    SwaggerRenderPlugin,
    YamlRenderPlugin,
)
from litestar.static_files import create_static_files_router

STATIC = Path(__file__).parent / "static"
ASSETS = "/schema/static"
_SWAGGER = f"{ASSETS}/swagger-ui"
# Litestar's default favicon comes from a CDN too.
_FAVICON = f"<link rel='icon' type='image/png' href='{_SWAGGER}/favicon-32x32.png'>"


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="modelreg",
        version=package_version(),
        path="/schema",
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
