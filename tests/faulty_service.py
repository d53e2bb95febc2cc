"""The real service, in this process over real HTTP (uvicorn on loopback), with a fault on the first call to
one path: what a stalled service, or a proxy that mangles an answer, does to an agent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx

from profiler_service.app import create_app, prepare
from profiler_service.settings import ServiceSettings
from tests import artifact_cache
from tests.service_harness import serve_app

ADMIN = "admin-of-the-faulty-service-" + "f" * 24
FAULTS = {
    # a gzip answer that is not gzip: httpx raises DecodingError, which is no transport error
    "garbled": (200, [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")], b"this is not gzip"),
    # a proxy's login or error page, answered 200
    "html": (200, [(b"content-type", b"text/html")], b"<html><body>Sign in to the network</body></html>"),
}


class FirstCallFault:
    """ASGI middleware: the first request to `path` meets `fault` ("stall": held until `release`, as by a
    service that takes the request and never answers; or one of FAULTS); `second` is set when the next one
    arrives, and that one and every later one reach the service."""

    def __init__(self, app: Any, path: str, fault: str) -> None:
        self.app, self.path, self.fault = app, path, fault
        self.calls = 0
        self.second = threading.Event()
        self.release = threading.Event()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            self.calls += 1
            if self.calls == 1:
                if self.fault == "stall":
                    await anyio.to_thread.run_sync(self.release.wait)
                    status, headers, body = 503, [(b"content-type", b"text/plain")], b"too late"
                else:
                    status, headers, body = FAULTS[self.fault]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            self.second.set()
        await self.app(scope, receive, send)


@contextmanager
def serving(root: Path, path: str, fault: str, **settings: Any) -> Iterator[tuple[str, FirstCallFault]]:
    """The service on its own SQLite file, behind the fault; yields its URL and the fault (admin: ADMIN). Its
    artifact folder shares the run's exports, as running_service's does (tests/artifact_cache.py)."""
    config = ServiceSettings(database_url=f"sqlite:///{root / 'service.db'}", admin_token=ADMIN,
                             artifact_dir=root / "artifacts", **settings)  # fmt: skip
    artifact_cache.seed(config.artifact_dir)
    prepare(config)
    app = FirstCallFault(create_app(config), path, fault)
    try:
        with serve_app(app) as base:
            try:
                yield base, app
            finally:
                app.release.set()  # a stalled call ends before the server is asked to stop
    finally:
        artifact_cache.harvest(config.artifact_dir)


def admin_client(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=300)
