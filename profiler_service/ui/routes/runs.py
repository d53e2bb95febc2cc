"""Runs: the list, one run with its live progress (the page polls `progress`), and cancelling one."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from db.states import RunStatus
from profiler_service.api.deps import MAX_ID, Id, SessionDep
from profiler_service.api.routes import runs as runs_api
from profiler_service.runs import run_status
from profiler_service.ui import views
from profiler_service.ui.auth import AdminCallerDep, CallerDep, read_form
from profiler_service.ui.render import UiRoute, page

router = APIRouter(route_class=UiRoute)


@router.get("/runs", include_in_schema=False)
def runs_page(
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    status: RunStatus | None = None,
    device_id: int | None = Query(default=None, ge=1, le=MAX_ID),
) -> Response:
    runs = views.recent_runs(session, device_id=device_id, status=status, limit=200)
    progress = {r.id: views.run_progress(session, r.id) for r in runs if r.status == RunStatus.RUNNING}
    return page(
        request,
        "runs.html",
        runs=runs,
        progress=progress,
        names=views.device_names(session),
        status=status,
        device_id=device_id,
        statuses=tuple(RunStatus),
    )


@router.get("/runs/{run_id}", include_in_schema=False)
def run_page(request: Request, run_id: Id, caller: CallerDep, session: SessionDep) -> Response:
    progress = views.run_progress(session, run_id)
    run = run_status(session, run_id)
    return page(
        request,
        "run.html",
        run=run,
        progress=progress,
        device_name=views.device_names(session).get(run.device_id),
        space_hash=run.space_hash,
    )


@router.get("/runs/{run_id}/progress", include_in_schema=False)
def run_progress(run_id: Id, caller: CallerDep, session: SessionDep) -> Response:
    """What the run page's script polls: counts, rate, ETA and status."""
    return JSONResponse(views.run_progress(session, run_id))


@router.post("/runs/{run_id}/cancel", include_in_schema=False)
async def cancel(request: Request, run_id: Id, caller: AdminCallerDep, session: SessionDep) -> Response:
    await read_form(request, caller.csrf)
    await run_in_threadpool(runs_api.cancel, run_id, session)
    return RedirectResponse(f"/ui/runs/{run_id}", status_code=303)
