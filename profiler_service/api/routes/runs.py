from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from profiler_service.api.deps import AdminDep, Id, ReaderDep, SessionDep
from profiler_service.runs import create_run, run_status
from profiler_service.schemas import RunCreate, RunPublic

router = APIRouter(prefix="/profiling-runs", tags=["profiling-runs"])


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


@router.get("/{run_id}", response_model=RunPublic, dependencies=[ReaderDep])
async def status(run_id: Id, session: SessionDep) -> RunPublic:
    return await run_in_threadpool(run_status, session, run_id)
