from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from db.states import RunStatus
from profiler_service.api.deps import MAX_ID, AdminDep, Id, ReaderDep, SessionDep
from profiler_service.api.pagination import After, Limit, paginated
from profiler_service.api.strict_json import StrictJsonRoute
from profiler_service.lifecycle import cancel_run
from profiler_service.runs import create_run, list_runs, run_status
from profiler_service.schemas import RunCreate, RunPublic

router = APIRouter(prefix="/profiling-runs", tags=["profiling-runs"], route_class=StrictJsonRoute)


@router.post("", status_code=201, response_model=RunPublic, dependencies=[AdminDep])
def start(body: RunCreate, session: SessionDep, request: Request) -> RunPublic:
    """Expand the space, reuse this device's measurements under the same config, queue the rest."""
    state = request.app.state
    run = create_run(
        session,
        body=body,
        cache=state.cache,
        artifact_dir=state.settings.artifact_dir,
        max_attempts=state.settings.max_attempts,
    )
    return run_status(session, run.id)


@router.get("", response_model=list[RunPublic], dependencies=[ReaderDep])
def runs(
    session: SessionDep,
    request: Request,
    response: Response,
    device_id: int | None = Query(default=None, ge=1, le=MAX_ID, description="Only this device's runs."),
    status: RunStatus | None = Query(default=None),
    after: After = 0,
    limit: Limit = 50,
) -> list[RunPublic]:
    """Runs, oldest first, `limit` at a time after the run id `after` (the `Link` header has the next page)."""
    rows = list_runs(session, device_id=device_id, status=status, after=after, limit=limit)
    return paginated(rows, request, response, limit, cursor=lambda r: r.id)


@router.get("/{run_id}", response_model=RunPublic, dependencies=[ReaderDep])
async def status(run_id: Id, session: SessionDep) -> RunPublic:
    return await run_in_threadpool(run_status, session, run_id)


@router.post("/{run_id}/cancel", response_model=RunPublic, dependencies=[AdminDep],
             responses={409: {"description": "The run already published or failed."}})  # fmt: skip
def cancel(run_id: Id, session: SessionDep) -> RunPublic:
    """Stop a running run: it never publishes, and its jobs no other running run needs are cancelled (an
    agent measuring them is told to stop). Measurements already stored stay. Cancelling twice is a no-op."""
    cancel_run(session, run_id)
    return run_status(session, run_id)
