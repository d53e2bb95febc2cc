"""Two services in one process (a test run, a notebook, an embedded quickstart beside a real one) each answer
for their own database: whatever one app caches is keyed to it, on its `app.state`, never on the module.

Both apps are served over real HTTP (uvicorn on loopback, in this process, each on its own SQLite file).
"""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import FastAPI

from profiler_service.app import create_app, prepare
from profiler_service.settings import ServiceSettings
from tests.service_harness import serve_app

ADMIN_A = "admin-of-service-a-" + "a" * 24
ADMIN_B = "admin-of-service-b-" + "b" * 24


def _app(root: Path, admin: str) -> FastAPI:
    settings = ServiceSettings(database_url=f"sqlite:///{root / 'service.db'}", admin_token=admin,
                               artifact_dir=root / "artifacts", sweep_seconds=3600)  # fmt: skip
    prepare(settings)  # migrations and the admin token's hash, as `dnas serve` does
    return create_app(settings)


def _get_devices(base: str, token: str) -> httpx.Response:
    return httpx.get(f"{base}/v1/devices", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_one_services_admin_token_is_refused_by_another_in_the_same_process(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with serve_app(_app(tmp_path / "a", ADMIN_A)) as a, serve_app(_app(tmp_path / "b", ADMIN_B)) as b:
        assert _get_devices(a, ADMIN_A).status_code == 200  # each app reads its own database's admin hash
        refused = _get_devices(b, ADMIN_A)
        assert refused.status_code == 401, refused.text
        assert "not a valid token" in refused.json()["detail"]
        assert _get_devices(b, ADMIN_B).status_code == 200  # and B's own admin token still works
        assert _get_devices(a, ADMIN_B).status_code == 401  # in both directions
        assert _get_devices(a, ADMIN_A).status_code == 200
