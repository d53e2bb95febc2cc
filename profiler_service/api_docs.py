"""The interactive API reference at /docs (Swagger UI), served from this origin under the dashboard's CSP.

FastAPI's own /docs and /redoc pages load an unpinned script from a CDN, on the same origin as the dashboard:
whoever serves that script runs code next to a signed-in admin's session, and a lab network without internet
gets a blank page. Here the page and its assets come from this service: Swagger UI's files as the
`fastapi-offline` package ships them (a pinned dependency), and a start-up script of ours, because the CSP
(`script-src 'self'`) refuses the inline script FastAPI's page carries. The assets' URLs carry their content
hash, as the dashboard's do, so an upgrade is never served from a stale cache.

Redoc is not offered: it styles itself by injecting `<style>` elements, which `style-src 'self'` refuses, and
the CSP is not loosened for it. `/openapi.json` is there for any other viewer.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from profiler_service.ui.render import SECURITY_HEADERS

VENDOR = Path(fastapi_offline.__file__).parent / "static"  # swagger-ui-bundle.js, swagger-ui.css, favicon.png
OWN = Path(__file__).parent / "ui" / "static" / "swagger-init.js"
PREFIX = "/docs/static"


@cache
def _asset(directory: Path, name: str) -> str:
    digest = hashlib.sha256((directory / name).read_bytes()).hexdigest()[:12]
    return f"{PREFIX}/{name}?v={digest}"


def _page(openapi_url: str, title: str) -> str:
    css, bundle = _asset(VENDOR, "swagger-ui.css"), _asset(VENDOR, "swagger-ui-bundle.js")
    init = f"/ui/static/{OWN.name}?v={hashlib.sha256(OWN.read_bytes()).hexdigest()[:12]}"
    icon = _asset(VENDOR, "favicon.png")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - API</title>
<link rel="icon" href="{icon}">
<link rel="stylesheet" href="{css}">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="{bundle}"></script>
<script src="{init}"></script>
</body>
</html>
"""


def install(app: FastAPI) -> None:
    """/docs and its assets on `app`, which must be built with `docs_url=None, redoc_url=None`."""
    assert app.docs_url is None and app.redoc_url is None, "FastAPI's CDN pages would answer first"
    assert app.openapi_url is not None
    body = _page(app.openapi_url, app.title)
    app.mount(PREFIX, StaticFiles(directory=VENDOR), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs(_: Request) -> HTMLResponse:
        return HTMLResponse(body, headers=SECURITY_HEADERS)
