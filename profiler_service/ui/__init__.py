"""The dashboard at /ui: server-rendered pages (Jinja2) over the service's own data functions and permission
checks, with small vendored scripts (live progress, sortable tables, the comparison chart) and nothing fetched
from another origin. `install` mounts it on the service's app."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles

from profiler_service.errors import NotFound
from profiler_service.ui.render import STATIC, UiRoute
from profiler_service.ui.routes import devices, fidelity, runs, session, tables, tokens

router = APIRouter(prefix="/ui", route_class=UiRoute)
for module in (session, devices, runs, tables, fidelity, tokens):
    router.include_router(module.router)


@router.get("/{path:path}", include_in_schema=False)
def not_found(path: str, request: Request) -> Response:
    """Any other /ui path: a page that says so, not the API's JSON."""
    raise NotFound(f"the dashboard has no page at /ui/{path[:100]}")


def install(app: FastAPI) -> None:
    # Static files first: the catch-all page above would otherwise answer for them.
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    app.include_router(router)
