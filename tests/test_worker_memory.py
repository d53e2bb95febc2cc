"""What each worker remembers so a table fetch costs no query still changes at once on every worker.

A reader token each worker remembers (profiler_service/reader_tokens.py: a table fetch costs no query for its
token) still stops working at once on every worker when it is revoked, through the API or the dashboard's
code path, on whichever worker: the revocation is announced to every worker's listener. And a device's `latest`
table, remembered per worker (profiler_service/table_versions.py), moves on every worker when it publishes
(PostgreSQL, real HTTP, 2 workers)."""

from __future__ import annotations

from contextlib import ExitStack

import httpx
import pytest

from tests.service_harness import register, running_service, start_run, wait_for_run
from tests.test_admin_token import one_client_per_worker, status


@pytest.mark.postgres
def test_a_revoked_reader_token_stops_at_once_on_every_worker(tmp_path, pg_url) -> None:
    with running_service(pg_url, tmp_path, workers=2) as svc, ExitStack() as stack, svc.client() as admin:
        workers = one_client_per_worker(svc, stack)
        admin_auth = {"Authorization": f"Bearer {svc.admin_token}"}
        for revoker, other in (workers, workers[::-1]):  # revoked through each worker in turn
            reader = admin.post("/v1/tokens", json={"name": "search"}).raise_for_status().json()
            for _ in range(2):  # the first call looks the token up; the second is answered from each worker's memory
                assert [status(w, reader["token"], "/v1/devices") for w in workers] == [200, 200]

            revoked = revoker.post(f"/v1/tokens/{reader['id']}/revoke", headers=admin_auth)
            assert revoked.status_code == 200 and revoked.json()["revoked_at"], revoked.text
            assert status(other, reader["token"], "/v1/devices") == 401, "the other worker still let it in"
            assert status(revoker, reader["token"], "/v1/devices") == 401, "the revoking worker still let it in"


STATS = {"median_us": 100.0, "mean_us": 101.0, "p10_us": 95.0, "p90_us": 110.0, "std_us": 4.0, "n": 10}


def publish(svc, admin: httpx.Client, device: dict, resolution: int) -> None:  # type: ignore[no-untyped-def]
    """A run of a tiny space measured by a stand-in agent over HTTP (every job at once), until it is published."""
    run = start_run(admin, device["id"], space={"resolution": resolution, "width": 0.25, "num_classes": 10,
                                                "candidates": ["skip"]})  # fmt: skip
    with httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {device['agent_token']}"}, timeout=60) as c:
        while (resp := c.post("/v1/agent/lease", json={"wait_seconds": 0, "max_jobs": 500})).status_code == 200:
            batch = resp.json()
            results = [{"job_id": j["job_id"], **STATS} for j in batch["jobs"]]
            c.post(
                "/v1/agent/results", json={"lease_token": batch["lease_token"], "results": results}
            ).raise_for_status()
    assert wait_for_run(admin, run["id"])["status"] == "published"


@pytest.mark.postgres
def test_latest_moves_at_once_on_every_worker_that_answered_it_from_memory(tmp_path, pg_url) -> None:
    with running_service(pg_url, tmp_path, workers=2) as svc, ExitStack() as stack, svc.client() as admin:
        device = register(admin, "publishing")
        publish(svc, admin, device, 32)
        workers = one_client_per_worker(svc, stack)
        auth = {"Authorization": f"Bearer {svc.admin_token}"}

        def latest(client: httpx.Client) -> str:
            resp = client.get(f"/v1/devices/{device['id']}/latency-tables/latest", headers=auth)
            assert resp.status_code == 200, resp.text
            return resp.headers["x-table-version"]

        for _ in range(2):  # the second fetch on each worker is answered from its memory
            assert [latest(w) for w in workers] == ["1", "1"]
        publish(svc, admin, device, 40)
        assert [latest(w) for w in workers] == ["2", "2"], "a worker still served the old latest"
        one = workers[0].get(f"/v1/devices/{device['id']}/latency-tables/1", headers=auth)
        assert one.headers["x-table-version"] == "1"  # a numbered version still names its own table
