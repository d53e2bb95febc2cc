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
from tests.waiting import wait_until


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


def _revoke_by_hand(pg_url: str, token_id: int, *notifications: tuple[str, str]) -> None:
    """Revoke in SQL, with exactly these notifications sent by the same transaction (PostgreSQL delivers them
    to a listener together, in one packet) or none."""
    import psycopg

    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=False) as conn:
        conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE id = %s", (token_id,))
        for channel, payload in notifications:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
        conn.commit()


@pytest.mark.postgres
def test_a_revocation_announced_with_a_device_change_is_heard(tmp_path, pg_url) -> None:
    """The listener used to leave psycopg's notifies() after a device notification, which dropped the rest of
    the packet: a revocation committed with a device change was never heard, and the worker let the revoked
    token in for good (failed before: 200 after the deadline). Rechecks are an hour apart here."""
    from profiler_service.notify import DEVICES_CHANNEL, TOKENS_CHANNEL

    with running_service(pg_url, tmp_path, DNAS_SERVICE_WAKE_RECHECK_SECONDS="3600") as svc, svc.client() as admin:
        device = register(admin, "rotating")
        reader = admin.post("/v1/tokens", json={"name": "search"}).raise_for_status().json()
        with httpx.Client(base_url=svc.url, timeout=60) as client:
            for _ in range(2):  # looked up, then answered from the worker's memory
                assert status(client, reader["token"], "/v1/devices") == 200
            _revoke_by_hand(pg_url, reader["id"], (DEVICES_CHANNEL, str(device["id"])), (TOKENS_CHANNEL, "revoked"))
            wait_until(lambda: status(client, reader["token"], "/v1/devices") == 401,
                       what="the revoked token refused", timeout_s=20)  # fmt: skip


@pytest.mark.postgres
def test_a_revocation_no_notification_announced_is_refused_by_the_next_recheck(tmp_path, pg_url) -> None:
    """A revocation written by hand (or by an older service, or missed behind a pooler) sends nothing: the
    worker's memory is dropped at every recheck, so the token stops working within one recheck, not never
    (failed before: still 200)."""
    quick = {"DNAS_SERVICE_WAKE_RECHECK_SECONDS": "0.5"}
    with running_service(pg_url, tmp_path, **quick) as svc, svc.client() as admin:
        reader = admin.post("/v1/tokens", json={"name": "search"}).raise_for_status().json()
        with httpx.Client(base_url=svc.url, timeout=60) as client:
            for _ in range(2):
                assert status(client, reader["token"], "/v1/devices") == 200
            _revoke_by_hand(pg_url, reader["id"])
            wait_until(lambda: status(client, reader["token"], "/v1/devices") == 401,
                       what="the revoked token refused", timeout_s=20)  # fmt: skip
