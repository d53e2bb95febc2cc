"""All routers, mounted under /v1."""

import os

from fastapi import APIRouter
from sqlalchemy import text

from profiler_service.api.deps import SessionDep
from profiler_service.api.routes import agent, devices, networks, runs, tables, tokens

api_router = APIRouter(prefix="/v1")
for module in (devices, tokens, runs, agent, tables, networks):
    api_router.include_router(module.router)


@api_router.get("/health", tags=["health"])
def health(session: SessionDep) -> dict[str, str | int]:
    """Ready to serve: the worker that answers reaches the database (else 503, like every other call).

    `worker_pid` names that worker process, so a deployment, or a test, can tell that every worker of a
    multi-worker service came back after the database restarted, not just the one a keep-alive reached.
    """
    session.execute(text("SELECT 1"))
    return {"status": "ok", "database": "ok", "worker_pid": os.getpid()}
