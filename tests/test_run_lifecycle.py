"""Runs always finish: published even if the worker that should have published died, failed and cancelled
states stored, leases that die on their last attempt ended, and no write from an idle agent's long poll."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from db.engine import make_engine, make_sessionmaker
from db.models import Job, LatencyTable, Measurement, ProfilingRun
from tests.leases import expire_leases
from tests.service_harness import register, running_service, wait_for_run

RESULT = {"median_us": 100.0, "mean_us": 101.0, "p10_us": 95.0, "p90_us": 110.0, "std_us": 5.0, "n": 10}
TINY = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["skip"]}
FAST = {"threads": 1, "warmup": 1, "runs": 5}


def _run(admin: httpx.Client, device_id: int, anchors: int = 0) -> dict:
    body = {"device_id": device_id, "space": TINY, "config": FAST, "anchors": anchors}
    resp = admin.post("/v1/profiling-runs", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def _lease_all(agent: httpx.Client) -> dict:
    resp = agent.post("/v1/agent/lease", json={"wait_seconds": 0, "max_jobs": 1000, "protocol": 2})
    assert resp.status_code == 200, resp.text
    return resp.json()


def _report(agent: httpx.Client, token: str, jobs: list[dict]) -> httpx.Response:
    results = [{"job_id": j["job_id"], **RESULT} for j in jobs]
    return agent.post("/v1/agent/results", json={"lease_token": token, "results": results})


def _db(url: str):  # type: ignore[no-untyped-def]
    return make_sessionmaker(make_engine(url))()


def _poll(predicate, timeout_s: float = 60, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _worker_pids(parent: int) -> list[int]:
    """uvicorn's worker processes: the supervisor's children started by multiprocessing's spawn."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdecimal():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and "spawn_main" in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.mark.postgres
def test_worker_killed_between_the_last_result_and_publication_the_run_is_published_anyway(pg_url, tmp_path):
    """The last result commits, then the worker dies before the publishing transaction commits: the run must
    not stay `running` forever. A row lock held by the test stops the worker exactly between the two."""
    import psycopg

    with running_service(pg_url, tmp_path, workers=2, lease_seconds=600,
                         DNAS_SERVICE_SWEEP_SECONDS="0.5") as svc, svc.client() as admin:  # fmt: skip
        device = register(admin, "dies-while-publishing")
        run = _run(admin, device["id"])
        with svc.client(device["agent_token"]) as agent:
            batch = _lease_all(agent)
            *first, last = batch["jobs"]
            assert _report(agent, batch["lease_token"], first).status_code == 200
        assert admin.get(f"/v1/profiling-runs/{run['id']}").json()["status"] == "running"

        dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as lock:
            lock.execute("SELECT 1 FROM profiling_runs WHERE id = %s FOR UPDATE", (run["id"],))  # holds the row

            def post_last() -> None:
                with svc.client(device["agent_token"]) as agent, contextlib.suppress(httpx.HTTPError):
                    _report(agent, batch["lease_token"], [last])  # its worker is killed mid-request

            poster = threading.Thread(target=post_last)
            poster.start()
            with _db(pg_url) as s:
                _poll(lambda: s.scalar(select(func.count(Measurement.id))) == run["total"], what="the last result")
            # The result is committed; the publishing UPDATE waits on the row lock.
            with psycopg.connect(dsn, autocommit=True) as watch:
                waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s"
                _poll(lambda: watch.execute(waiting, ("UPDATE profiling_runs%",)).fetchone()[0] >= 1,
                      what="the publish to block")  # fmt: skip
            workers = _worker_pids(svc.proc.pid)
            assert len(workers) == 2, workers
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            poster.join(timeout=60)
            with _db(pg_url) as s:
                assert s.get(ProfilingRun, run["id"]).status == "running"
                assert s.scalar(select(func.count(LatencyTable.id))) == 0
            lock.rollback()  # the lock goes; nobody posts anything again
        # uvicorn replaced the dead workers; their sweep publishes the run.
        published = wait_for_run(admin, run["id"], timeout_s=120)
        assert published["status"] == "published" and published["table_version"] == 1, published
    with _db(pg_url) as s:
        assert s.scalar(select(func.count(LatencyTable.id))) == 1
        assert s.scalar(select(func.count(Measurement.id))) == run["total"]


def test_a_lease_that_dies_on_its_last_attempt_fails_the_run_and_the_state_is_stored(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    with running_service(url, tmp_path, lease_seconds=600, DNAS_SERVICE_MAX_ATTEMPTS="1",
                         DNAS_SERVICE_SWEEP_SECONDS="0.5") as svc, svc.client() as admin:  # fmt: skip
        device = register(admin, "loses-one")
        run = _run(admin, device["id"])
        with svc.client(device["agent_token"]) as agent:
            batch = _lease_all(agent)
            *first, last = batch["jobs"]
            assert _report(agent, batch["lease_token"], first).status_code == 200
            # `last` is never reported: its only lease expires (time travel in SQL, not a 1 s lease raced on a
            # loaded host), the sweep fails it, and with it the run.
            assert expire_leases(url, job_ids=[last["job_id"]]) == 1
            failed = wait_for_run(admin, run["id"], timeout_s=60)
            assert failed["status"] == "failed" and failed["failed"] == 1, failed
            assert "lease expired on the last attempt" in failed["reason"]
            late = _report(agent, batch["lease_token"], [last]).json()["acks"][0]
            assert late["status"] == "conflict"
        listed = admin.get("/v1/profiling-runs", params={"status": "failed"}).json()
        assert [r["id"] for r in listed] == [run["id"]]
    with _db(url) as s:  # stored, not computed on read
        stored = s.get(ProfilingRun, run["id"])
        assert stored.status == "failed" and stored.finished_at is not None


def test_an_expired_lease_token_works_until_the_job_is_taken(tmp_path):
    """PROTOCOL.md: after lease_expires_at the token still extends and reports, until another claim, the sweep
    (last attempt) or a cancel takes the job."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    with running_service(url, tmp_path, lease_seconds=600) as svc, svc.client() as admin:
        device = register(admin, "late")
        _run(admin, device["id"])
        with svc.client(device["agent_token"]) as agent:
            batch = _lease_all(agent)
            expiry = batch["lease_expires_at"]
            assert expire_leases(url, lease_token=batch["lease_token"]) == len(batch["jobs"])  # its time passed
            hb = agent.post("/v1/agent/heartbeat", json={"lease_token": batch["lease_token"]})
            assert hb.status_code == 200 and hb.json()["lease_expires_at"] > expiry, hb.text
            acks = _report(agent, batch["lease_token"], batch["jobs"][:1]).json()["acks"]
            assert acks[0]["status"] == "done"


def test_cancelling_a_run_stops_its_agent_and_retiring_a_device_cancels_its_work(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    with running_service(url, tmp_path, lease_seconds=600) as svc, svc.client() as admin:
        device = register(admin, "cancel-me")
        run = _run(admin, device["id"])
        with svc.client(device["agent_token"]) as agent:
            batch = _lease_all(agent)
            cancelled = admin.post(f"/v1/profiling-runs/{run['id']}/cancel")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
            assert admin.post(f"/v1/profiling-runs/{run['id']}/cancel").status_code == 200  # twice: a no-op
            hb = agent.post("/v1/agent/heartbeat", json={"lease_token": batch["lease_token"]})
            assert hb.status_code == 409  # the agent stops measuring
            acks = _report(agent, batch["lease_token"], batch["jobs"]).json()["acks"]
            assert {a["status"] for a in acks} == {"conflict"} and "cancelled" in acks[0]["detail"]
            assert agent.post("/v1/agent/lease", json={"wait_seconds": 0}).status_code == 204
            # A new run of the same space queues the ops again, and can be finished.
            again = _run(admin, device["id"])
            batch = _lease_all(agent)
            assert _report(agent, batch["lease_token"], batch["jobs"]).status_code == 200
            assert wait_for_run(admin, again["id"])["status"] == "published"
            assert admin.post(f"/v1/profiling-runs/{again['id']}/cancel").status_code == 409  # published

        other = register(admin, "retire-me")
        pending = _run(admin, other["id"])
        assert admin.post(f"/v1/devices/{other['id']}/retire").status_code == 200
        assert admin.get(f"/v1/profiling-runs/{pending['id']}").json()["status"] == "cancelled"
        with _db(url) as s:
            states = set(s.scalars(select(Job.status).where(Job.device_id == other["id"])))
        assert states == {"cancelled"}
        statuses = {r["id"]: r["status"] for r in admin.get("/v1/profiling-runs").json()}
        assert statuses == {run["id"]: "cancelled", again["id"]: "published", pending["id"]: "cancelled"}


def test_an_idle_agents_long_poll_writes_nothing(tmp_path):
    """Each empty poll used to end dead leases with an UPDATE: on SQLite, the writer lock 4 times a second
    per idle agent, even when it changed no row. Here another connection holds the writer lock while an
    agent polls: a poll that needed it would wait out SQLite's busy timeout (30 s) and fail."""
    db = tmp_path / "s.db"
    with running_service(f"sqlite:///{db}", tmp_path, DNAS_SERVICE_LONG_POLL_SECONDS="2") as svc:
        with svc.client() as admin:
            batch_agent, single_agent = register(admin, "idle-batches"), register(admin, "idle-single-jobs")
        polls = [(batch_agent, {"wait_seconds": 2, "protocol": 2, "max_jobs": 10}), (single_agent, {"wait_seconds": 2})]
        clients = [(httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {d['agent_token']}"},
                                 timeout=20), body) for d, body in polls]  # fmt: skip
        for agent, body in clients:  # the first poll records last_seen and the protocol: writes, outside the lock
            assert agent.post("/v1/agent/lease", json=body | {"wait_seconds": 0}).status_code == 204
        writer = sqlite3.connect(db, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # holds the writer lock; readers still read (WAL)
        before = writer.execute("PRAGMA data_version").fetchone()[0]
        try:
            for agent, body in clients * 2:  # each claims (and finds nothing) every 0.25 s for 2 s
                assert agent.post("/v1/agent/lease", json=body).status_code == 204
        finally:
            writer.execute("ROLLBACK")
            for agent, _ in clients:
                agent.close()
        assert writer.execute("PRAGMA data_version").fetchone()[0] == before
        writer.close()


def test_exports_run_with_no_database_connection_checked_out(tmp_path):
    """ONNX export takes seconds per op: done inside a transaction, a few large runs held every pooled
    connection and agents got 503s. The cache records how many connections were out at each export."""
    from db import migrate
    from db.models import Device
    from profiler_service.runs import create_run
    from profiler_service.schemas import RunCreate
    from search.space.export import ExportCache

    url = f"sqlite:///{tmp_path / 's.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    checked_out: list[int] = []

    class WatchedCache(ExportCache):
        def get(self, spec):  # type: ignore[no-untyped-def]
            checked_out.append(engine.pool.checkedout())
            return super().get(spec)

    with make_sessionmaker(engine)() as session:
        session.add(Device(name="d", platform="linux", properties={}, token_hash="0" * 64))
        session.commit()
        body = RunCreate(device_id=1, space=TINY, config=FAST, anchors=1)
        run = create_run(session, body=body, cache=WatchedCache(tmp_path / "onnx"), artifact_dir=tmp_path,
                         max_attempts=3)  # fmt: skip
        assert run.total > 0
    engine.dispose()
    assert checked_out and set(checked_out[: run.total - 1]) == {0}, checked_out
