"""When every pooled database connection is busy, a request waits `pool_timeout` and then gets 503 with
Retry-After, not a 500 or a hang: a client (an agent, a search) retries later and loses nothing.

The service's pools are large (10 + 10 on PostgreSQL), so the test serves the real app over real HTTP
(uvicorn on loopback, in this process) on a pool of one connection with a short timeout, and holds that one
connection itself: the next request that needs the database finds the pool exhausted.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import QueuePool

from db.engine import make_sessionmaker
from profiler_service.app import create_app, prepare
from profiler_service.settings import ServiceSettings
from tests.service_harness import serve_app

ADMIN = "pool-test-admin-token-" + "z" * 20


@pytest.fixture
def one_connection_service(tmp_path) -> Iterator[tuple[str, object]]:
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    settings = ServiceSettings(database_url=url, admin_token=ADMIN, artifact_dir=tmp_path / "artifacts",
                               sweep_seconds=3600)  # fmt: skip
    prepare(settings)  # migrations and the admin token's hash, as `dnas serve` does
    app = create_app(settings)
    app.state.engine.dispose()
    tiny = create_engine(url, poolclass=QueuePool, pool_size=1, max_overflow=0, pool_timeout=0.5,
                         connect_args={"check_same_thread": False})  # fmt: skip
    app.state.engine, app.state.sessionmaker = tiny, make_sessionmaker(tiny)
    with serve_app(app) as base:
        yield base, tiny


def test_an_exhausted_pool_is_503_with_retry_after_and_the_next_request_succeeds(one_connection_service):
    base, engine = one_connection_service
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30) as admin:
        assert admin.get("/v1/devices").status_code == 200  # also caches the admin hash: auth needs no connection
        held = engine.connect()  # the pool's only connection, busy elsewhere
        try:
            held.execute(text("SELECT 1"))
            busy = admin.get("/v1/devices")
            created = admin.post("/v1/devices", json={"name": "while-busy", "platform": "linux"})
        finally:
            held.close()
        assert busy.status_code == 503, busy.text
        assert busy.headers["retry-after"] == "1" and "overloaded" in busy.json()["detail"]
        assert busy.json()["request_id"] == busy.headers["x-request-id"]
        assert created.status_code == 503, created.text
        # Free again: the same calls succeed, and the refused write was not half-done.
        assert admin.get("/v1/devices").json() == []
        assert admin.post("/v1/devices", json={"name": "while-busy", "platform": "linux"}).status_code == 201
