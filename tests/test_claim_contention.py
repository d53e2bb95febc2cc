"""A lease call made while other claims of the same device hold rows gets the next free work, never 204 with jobs
queued (PostgreSQL, real HTTP).

At 64 concurrent lease calls of one device (bench.load), most claims aimed at the oldest group while earlier
claims held its rows, looked again at the same uncommitted rows until their retries ran out, and answered 204:
1,136 of 1,290 leases were empty with 50,000 jobs queued. Here an open transaction holds the first run's rows as
a concurrent claim does between its SELECT ... FOR UPDATE and its COMMIT, so the outcome does not depend on
timing."""

from __future__ import annotations

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from profiler_service.wakeups import libpq_url
from tests.service_harness import register, running_service, start_run

SPACE = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["skip"]}
LEASE = {"wait_seconds": 0, "max_jobs": 500, "protocol": 2}


@pytest.mark.postgres
def test_a_lease_while_another_claim_holds_the_oldest_group_takes_the_next_one(pg_url, tmp_path):
    with running_service(pg_url, tmp_path, lease_seconds=600) as svc, svc.client() as admin:
        device = register(admin, "contended-claims")
        first = start_run(admin, device["id"], space=SPACE)
        second = start_run(admin, device["id"], space={**SPACE, "resolution": 40})
        auth = {"Authorization": f"Bearer {device['agent_token']}"}
        with (
            psycopg.connect(libpq_url(make_url(pg_url))) as other,
            httpx.Client(base_url=svc.url, headers=auth, timeout=60) as agent,
        ):
            held = {row[0] for row in other.execute("SELECT id FROM jobs WHERE run_id = %s FOR UPDATE", (first["id"],))}
            assert held

            resp = agent.post("/v1/agent/lease", json=LEASE)
            assert resp.status_code == 200, f"{resp.status_code}: jobs were queued but the lease came back empty"
            assert resp.json()["batch_group"] == f"run:{second['id']}"
            assert {job["job_id"] for job in resp.json()["jobs"]}.isdisjoint(held)

            other.rollback()  # the other claim gave its rows up without leasing them: they are still there
            resp = agent.post("/v1/agent/lease", json=LEASE)
            assert resp.status_code == 200, "the device was recorded idle by a claim that only met locked rows"
            assert resp.json()["batch_group"] == f"run:{first['id']}"
            assert {job["job_id"] for job in resp.json()["jobs"]} == held
