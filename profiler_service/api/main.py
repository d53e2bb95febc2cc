"""All routers, mounted under /v1."""

from fastapi import APIRouter

from profiler_service.api.routes import agent, devices, networks, runs, tables, tokens

api_router = APIRouter(prefix="/v1")
for module in (devices, tokens, runs, agent, tables, networks):
    api_router.include_router(module.router)


@api_router.get("/health", tags=["health"])
def health() -> dict[str, str]:
    return {"status": "ok"}
