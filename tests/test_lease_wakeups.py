"""An idle long poll is woken by the job that is queued for it (PostgreSQL LISTEN/NOTIFY), and SQLite still
works by polling. Over real HTTP, through uvicorn with two workers, on a real PostgreSQL.

The PostgreSQL service is started with a one-hour poll interval and recheck, and a two-minute lease wait: a
lease call that was already waiting and answers 200 with the new job can only have been woken by the
notification of the transaction that queued it. No timing is asserted.
"""

from __future__ import annotations

import re
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest

from tests.service_harness import Service, register, running_service, start_run
from tests.waiting import wait_until

NEVER_BY_POLLING = {
    "DNAS_SERVICE_LEASE_POLL_SECONDS": "3600",
    "DNAS_SERVICE_WAKE_RECHECK_SECONDS": "3600",
    "DNAS_SERVICE_LONG_POLL_SECONDS": "120",
}
WAIT_S = 120.0


def gauge(svc: Service, name: str) -> float:
    """A gauge summed over the service's workers, from its Prometheus endpoint."""
    with svc.client() as admin:
        text = admin.get("/v1/metrics").text
    found = re.search(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def lease_in_background(pool: ThreadPoolExecutor, svc: Service, token: str) -> Future[httpx.Response]:
    def call() -> httpx.Response:
        with httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {token}"}, timeout=WAIT_S + 60) as c:
            return c.post("/v1/agent/lease", json={"wait_seconds": WAIT_S})

    return pool.submit(call)


def waiting_calls_reach(svc: Service, n: int) -> None:
    wait_until(lambda: gauge(svc, "dnas_lease_waiting") >= n, what=f"{n} lease calls waiting", timeout_s=60,
               alive=[svc.proc])  # fmt: skip


@pytest.fixture
def pg_service(pg_url, tmp_path):
    with running_service(pg_url, tmp_path, workers=2, **NEVER_BY_POLLING) as svc:
        wait_until(lambda: gauge(svc, "dnas_lease_listeners") == 2, what="both workers listening", timeout_s=60,
                   alive=[svc.proc])  # fmt: skip
        yield svc


def test_postgres_waiting_lease_is_woken_by_the_queued_job(pg_service: Service):
    svc = pg_service
    with svc.client() as admin, ThreadPoolExecutor(2) as pool:
        device = register(admin, "woken")
        other = register(admin, "stays-idle")
        waiting = lease_in_background(pool, svc, device["agent_token"])
        idle = lease_in_background(pool, svc, other["agent_token"])
        waiting_calls_reach(svc, 2)
        run = start_run(admin, device["id"])
        resp = waiting.result(timeout=WAIT_S + 60)
        assert resp.status_code == 200, resp.text
        assert resp.json()["config"] == run["config"]
        assert gauge(svc, "dnas_lease_waiting") == 1  # the other device's call was not handed the job
        assert not idle.done()
        start_run(admin, other["id"])  # and its own job wakes it in turn
        assert idle.result(timeout=WAIT_S + 60).status_code == 200


def test_postgres_waiting_lease_of_a_rotated_token_is_refused(pg_service: Service):
    """A token the worker remembers, so that its idle calls cost no query, stops working when it is rotated:
    the waiting call is woken and answered 401, and so is the next call with it."""
    svc = pg_service
    with svc.client() as admin, ThreadPoolExecutor(1) as pool:
        device = register(admin, "rotated")
        old = device["agent_token"]
        with svc.client(old) as agent:  # both workers learn the token (a call each, whichever worker takes it)
            for _ in range(4):
                assert agent.post("/v1/agent/lease", json={"wait_seconds": 0}).status_code == 204
        waiting = lease_in_background(pool, svc, old)
        waiting_calls_reach(svc, 1)
        assert admin.post(f"/v1/devices/{device['id']}/rotate-token").status_code == 200
        assert waiting.result(timeout=WAIT_S + 60).status_code == 401
        with svc.client(old) as agent:
            assert agent.post("/v1/agent/lease", json={"wait_seconds": 0}).status_code == 401


def test_sqlite_waiting_lease_gets_the_job_by_polling(sqlite_url, tmp_path):
    # The default poll interval; a wait long enough to outlast queueing the run on a slow machine.
    slow_enough = {"DNAS_SERVICE_LONG_POLL_SECONDS": "120"}
    with (
        running_service(sqlite_url, tmp_path, **slow_enough) as svc,
        svc.client() as admin,
        ThreadPoolExecutor(1) as pool,
    ):
        device = register(admin, "polled")
        waiting = lease_in_background(pool, svc, device["agent_token"])
        waiting_calls_reach(svc, 1)
        run = start_run(admin, device["id"])
        resp = waiting.result(timeout=WAIT_S + 60)
        assert resp.status_code == 200, resp.text
        assert resp.json()["config"] == run["config"]
