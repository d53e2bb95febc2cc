"""The FastAPI application. `prepare` migrates and ensures the admin token once, before workers start;
`create_app` is what each uvicorn worker builds."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from db import migrate
from db.engine import make_engine, make_sessionmaker
from profiler_service.api.main import api_router
from profiler_service.errors import ApiError
from profiler_service.provision import ensure_admin_token_file, provision_device
from profiler_service.security import ensure_admin_token
from profiler_service.settings import ServiceSettings
from search.export import ExportCache
from search.opspec import OpSpecError

log = logging.getLogger("dnas.service")


def prepare(settings: ServiceSettings) -> str | None:
    """Migrate to head, make sure an admin token exists, and register the devices the deployment declares.

    Returns a newly generated admin token, to print once (never when it is kept in `admin_token_file`).
    """
    migrate.upgrade(settings.database_url)
    admin = settings.admin_token
    if admin is None and settings.admin_token_file is not None:
        admin = ensure_admin_token_file(settings.admin_token_file)
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            generated = ensure_admin_token(session, admin)
            for name, platform in settings.provisioned():
                assert settings.provision_token_dir is not None  # the settings validator guarantees it
                provision_device(session, name=name, platform=platform, token_dir=settings.provision_token_dir)
            return generated
    finally:
        engine.dispose()


def _unique_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    app = FastAPI(
        title="dnas profiler service",
        version="1",
        description="Registers devices, queues per-operator measurements, publishes versioned latency tables.",
        generate_unique_id_function=_unique_id,
    )
    engine = make_engine(settings.database_url)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.cache = ExportCache(settings.artifact_dir / "onnx")
    app.state.table_cache = LruCache(64)
    app.include_router(api_router)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):  # type: ignore[no-untyped-def]
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return JSONResponse(
                {"detail": f"request body larger than {settings.max_body_bytes} bytes"}, status_code=413
            )
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _describe(exc)}, status_code=422)

    @app.exception_handler(OpSpecError)
    async def bad_spec(_: Request, exc: OpSpecError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(OperationalError)
    async def db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc.orig)
        return JSONResponse({"detail": "the database is unavailable; retry shortly"}, status_code=503)

    @app.exception_handler(PoolTimeout)
    async def overloaded(_: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("database pool exhausted: %s", exc)
        return JSONResponse({"detail": "the service is overloaded; retry shortly"}, status_code=503,
                            headers={"Retry-After": "1"})  # fmt: skip

    return app


class LruCache:
    """A small thread-safe LRU for immutable things (published tables) within one worker process."""

    def __init__(self, size: int) -> None:
        import threading
        from collections import OrderedDict

        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key):  # type: ignore[no-untyped-def]
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key, value) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
