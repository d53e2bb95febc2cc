"""The FastAPI application. `prepare` migrates and ensures the admin token once, before workers start;
`create_app` is what each uvicorn worker builds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from db import migrate
from db.engine import make_engine, make_sessionmaker
from profiler_service import api_docs, http_log, metrics, notify, request_id
from profiler_service.api.main import api_router
from profiler_service.errors import ApiError
from profiler_service.lease_ops import LeaseOps
from profiler_service.provision import ensure_admin_token_file, provision_device
from profiler_service.query_scrub import QueryScrubMiddleware
from profiler_service.reader_tokens import ReaderTokens
from profiler_service.security import ensure_admin_token
from profiler_service.settings import ServiceSettings
from profiler_service.sweep import run_sweeps
from profiler_service.table_cache import TableCache
from profiler_service.table_versions import TableVersions
from profiler_service.ui import install as install_dashboard
from profiler_service.wakeups import Wakeups, libpq_url
from search.space.export import ExportCache
from search.space.opspec import OpSpecError

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


def _renderable(value: Any) -> Any:
    """`value` with every float that is not finite as its text: JSON has no infinity, and an error body that
    cannot be rendered becomes a 500 and a dropped connection instead of the refusal the caller needed."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _renderable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_renderable(v) for v in value]
    return value


def error(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error body: what was wrong, and the request id to quote (also in the X-Request-ID header)."""
    rid = request_id.current()
    return JSONResponse({"detail": _renderable(jsonable_encoder(detail)), "request_id": rid}, status_code=status,
                        headers={**(headers or {}), "X-Request-ID": rid})  # fmt: skip


MAX_ECHO = 256  # characters of a refused value echoed back: a refusal never returns a large body


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's list form, with each refused `input` shortened: an 8 MiB field is not sent back."""
    out = []
    for err in jsonable_encoder(exc.errors()):
        if "input" in err:
            text = repr(err["input"]) if not isinstance(err["input"], str) else err["input"]
            if len(text) > MAX_ECHO:
                err["input"] = text[:MAX_ECHO] + f"... ({len(text)} characters)"
        out.append(err)
    return out


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(run_sweeps(app.state.sessionmaker, app.state.settings))]
    engine = app.state.engine
    if engine.dialect.name == "postgresql":  # one listening connection per worker, for every lease call it holds
        tasks.append(asyncio.create_task(app.state.wakeups.run(libpq_url(engine.url))))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        engine.dispose()


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build what each uvicorn worker serves: the API under /v1 and the dashboard under /ui. The engine, the
    export cache and the table cache live on `app.state`, one per app, not per process."""
    settings = settings or ServiceSettings()
    app = FastAPI(
        title="dnas profiler service",
        version="1",
        description="Registers devices, queues per-operator measurements, publishes versioned latency tables.",
        generate_unique_id_function=_unique_id,
        docs_url=None,  # FastAPI's pages load their script from a CDN: api_docs serves /docs from here instead
        redoc_url=None,
        # Counted as the bytes arrive, chunked or not, before any handler or auth runs: 413 past the limit.
        max_body_size=settings.max_body_bytes,
        lifespan=lifespan,
    )
    engine = make_engine(settings.database_url)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    # Token checks not answered from memory (profiler_service/reader_tokens.py) are one SELECT each: read outside
    # a transaction, they cost one round trip, not three (psycopg sends BEGIN and ROLLBACK on their own), and
    # still see every revocation committed before them.
    app.state.read_sessions = make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))
    app.state.cache = ExportCache(settings.artifact_dir / "onnx")
    app.state.table_cache = TableCache(64)
    app.state.lease_ops = LeaseOps()  # operators as leases describe them (profiler_service/lease_ops.py)
    # Remembered while the worker's listener hears what would change them: reader tokens checked once, and
    # which table a fetch names.
    app.state.readers = ReaderTokens()
    app.state.table_versions = TableVersions()
    subscribers = {notify.TOKENS_CHANNEL: app.state.readers, notify.TABLES_CHANNEL: app.state.table_versions}
    app.state.wakeups = Wakeups(app.state.read_sessions, settings, subscribers)  # listens once started
    app.include_router(api_router)
    install_dashboard(app)  # /ui: the dashboard, on the same data functions and permission checks
    api_docs.install(app)  # /docs: Swagger UI from this origin, under the dashboard's CSP
    app.add_middleware(metrics.MetricsMiddleware, routes=lambda: app.routes)
    if settings.log_headers:  # inside the request id middleware: each line carries the request's id
        app.add_middleware(http_log.HeaderLogMiddleware)
    app.add_middleware(request_id.RequestIdMiddleware)  # so every line has the id
    app.add_middleware(QueryScrubMiddleware)  # added last: outermost, before anything logs the query

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status_code, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 413:  # the whole app's ceiling; each route's own limit is api/strict_json.py's
            detail = f"request body larger than {settings.max_body_bytes} bytes"
        return error(exc.status_code, detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, _validation_errors(exc))

    @app.exception_handler(OpSpecError)
    async def bad_spec(_: Request, exc: OpSpecError) -> JSONResponse:
        return error(422, str(exc))

    @app.exception_handler(OperationalError)
    async def db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc.orig)
        return error(503, "the database is unavailable; retry shortly", {"Retry-After": "1"})

    @app.exception_handler(PoolTimeout)
    async def overloaded(_: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("database pool exhausted: %s", exc)
        return error(503, "the service is overloaded; retry shortly", {"Retry-After": "1"})

    @app.exception_handler(IntegrityError)
    async def conflicted(_: Request, exc: IntegrityError) -> JSONResponse:
        log.warning("concurrent write conflicted: %s", exc.orig)
        return error(409, "a concurrent change conflicted with this one; retry")

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error(500, "internal error; quote the request id when reporting it")

    return app
