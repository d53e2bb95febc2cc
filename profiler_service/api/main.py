"""All routers, mounted under /v1, and the operational endpoints (health, metrics)."""

import os

from fastapi import APIRouter, Request, Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from profiler_service import metrics
from profiler_service.api.deps import ReaderDep
from profiler_service.api.routes import agent, devices, fidelity, imports, networks, runs, tables, tokens
from profiler_service.api.strict_json import StrictJsonRoute
from profiler_service.errors import Unavailable

api_router = APIRouter(prefix="/v1")
for module in (devices, tokens, runs, agent, tables, imports, networks, fidelity):  # fidelity after networks: its
    # /calibrations/{version} must not shadow networks' /calibrations/latest
    api_router.include_router(module.router)

ops = APIRouter(tags=["health"], route_class=StrictJsonRoute)


@ops.get("/health", responses={503: {"description": "The database is unreachable."}})
def health(request: Request) -> dict[str, str | int]:
    """Readiness: the database answers. A load balancer should send traffic only while this is 200.

    `worker_pid` names the worker process that answered, so a deployment, or a test, can tell that every worker
    of a multi-worker service came back after the database restarted, not just the one a keep-alive reached.
    """
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise Unavailable(f"the database is unavailable: {type(exc).__name__}") from None
    return {"status": "ok", "database": "ok", "worker_pid": os.getpid()}


@ops.get("/health/live")
async def live() -> dict[str, str]:
    """Liveness: the process answers, whatever the database does (restart it only if this fails)."""
    return {"status": "ok"}


@ops.get("/metrics", dependencies=[ReaderDep], response_class=Response,
         responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}})  # fmt: skip
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus metrics: requests and latency per route (all workers), queue depth, leases, runs, devices.
    Needs a reader or admin token."""
    body = await run_in_threadpool(metrics.exposition, request.app.state.sessionmaker)
    return Response(body, media_type=metrics.CONTENT_TYPE)


api_router.include_router(tokens.admin_router)
api_router.include_router(ops)
