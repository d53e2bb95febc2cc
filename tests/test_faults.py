"""Faults a long-running deployment meets: nothing is lost or doubled, and the service recovers by itself."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from db.engine import make_engine, make_sessionmaker
from db.models import Job, Measurement
from profiler_service.local_server import stop_process
from tests import postgres
from tests.emulator_harness import running_emulator
from tests.service_harness import free_port, register, running_service, start_agent, start_run, wait_for_run
from tests.waiting import wait_until


def _counts(db_url: str) -> tuple[int, int]:
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        out = (
            s.scalar(select(func.count(Measurement.id))),
            s.scalar(select(func.count(func.distinct(Measurement.job_id)))),
        )
    engine.dispose()
    return out


def test_service_killed_mid_run_and_restarted_loses_nothing(tmp_path):
    db_url, port = f"sqlite:///{tmp_path / 's.db'}", free_port()
    with running_service(db_url, tmp_path, port=port) as svc, svc.client() as admin:
        device = register(admin, "survivor")
        run = start_run(admin, device["id"], config={"warmup": 2, "rounds": 20, "runs_per_round": 15})
        agent = start_agent(svc, device["agent_token"], tmp_path, "--wait", "1")
        try:
            # The agent holds its batch and measures it: the service dies before the results arrive.
            wait_until(lambda: _leased(db_url) > 0, what="the batch leased", timeout_s=120, alive=[agent])
            svc.proc.send_signal(signal.SIGKILL)  # no shutdown, no flush: a crash
            svc.proc.wait()
        except BaseException:
            stop_process(agent, timeout_s=10)  # never outlive the test
            raise
    # The agent keeps retrying with backoff; a new service on the same database and port picks up the run.
    try:
        with running_service(db_url, tmp_path, port=port) as svc, svc.client() as admin:
            run = wait_for_run(admin, run["id"], timeout_s=240)
            stop_process(agent, timeout_s=60)  # while the service is up, so it can finish and say goodbye
    finally:
        if agent.poll() is None:  # never outlive the test
            stop_process(agent, timeout_s=10)
    assert run["status"] == "published", run
    assert run["done"] == run["total"]
    measurements, distinct = _counts(db_url)
    assert measurements == distinct == run["total"]


def _leased(db_url: str) -> int:
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        n = s.scalar(select(func.count(Job.id)).where(Job.status == "leased"))
    engine.dispose()
    return n or 0


def _health_on_a_new_connection(url: str) -> tuple[int, int | None]:
    """(status, answering worker's pid) over a connection of its own: the kernel hands each new connection to
    one of the workers, while a keep-alive client would keep talking to the same one."""
    resp = httpx.get(f"{url}/v1/health", headers={"Connection": "close"}, timeout=10)
    return resp.status_code, resp.json().get("worker_pid")


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.postgres
def test_postgres_restarted_under_a_running_service_recovers_in_every_worker(tmp_path, own_pg_cluster):
    cluster: postgres.PostgresCluster = own_pg_cluster
    url = cluster.create_database("restart")
    with running_service(url, tmp_path, workers=2) as svc, svc.client() as admin:
        register(admin, "before")
        workers: set[int] = set()

        def every_worker_answers() -> bool:
            status, pid = _health_on_a_new_connection(svc.url)
            assert status == 200
            workers.add(pid)
            return len(workers) == 2

        # Each worker has answered through the database, so each holds pooled connections that will go stale.
        wait_until(every_worker_answers, what="both workers to answer", timeout_s=60, interval_s=0.05)
        assert all(_parent(pid) == svc.proc.pid for pid in workers), workers  # the service's own workers
        cluster.stop()
        # One keep-alive connection, so the outage reaches one worker only and the other keeps its stale pool.
        down = admin.get("/v1/health")
        assert down.status_code == 503 and "database is unavailable" in down.json()["detail"]
        assert admin.get("/v1/devices").status_code == 503
        assert admin.get("/v1/health/live").status_code == 200  # liveness: do not restart it for this
        cluster.start()
        # No service restart: each pool notices its dead connections (pre-ping) and reconnects, so not one
        # request fails once the database is back, in whichever worker answers it.
        recovered: set[int] = set()

        def every_worker_recovers() -> bool:
            status, pid = _health_on_a_new_connection(svc.url)
            assert status == 200, f"a worker answered {status} after the database came back"
            recovered.add(pid)
            return recovered == workers

        wait_until(every_worker_recovers, what=f"workers {sorted(workers)} to answer", timeout_s=60, interval_s=0.05)
        assert register(admin, "after")["name"] == "after"


def _runs_on(emu_pid: int, needle: str) -> bool:
    """Whether a process under the emulator (a command it runs for the host) has `needle` in its command line."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                continue
            pid = int(proc.name)
            while pid > 1:
                pid = _parent(pid)
                if pid == emu_pid:
                    return True
        except (OSError, ValueError, IndexError):  # it exited while we looked
            continue
    return False


def test_device_vanishing_mid_batch_gives_its_jobs_back_with_the_reason(tmp_path):
    """A phone that vanishes while it measures is a lost link, not a failed model: every job of the batch goes
    back to the queue at once, without spending an attempt, with adb's words for why; the agent stays up
    waiting for the phone (it neither exits nor spins) and stops cleanly when asked."""
    space = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["skip"]}
    db_url = f"sqlite:///{tmp_path / 's.db'}"
    with running_service(db_url, tmp_path) as svc, svc.client() as admin:
        phone = register(admin, "flaky-phone", platform="android")
        run = start_run(admin, phone["id"], space=space, config={"warmup": 1, "runs": 2000})
        given_back = _jobs_given_back(db_url)
        with running_emulator(tmp_path / "sandbox") as emu:
            agent = subprocess.Popen(
                [sys.executable, "-m", "dnas", "agent", "android", "--server", svc.url, "--adb", emu.address,
                 "--key", str(tmp_path / "adbkey"), "--wait", "1", "--cache-dir", str(tmp_path / "cache")],
                env=os.environ | {"DNAS_AGENT_TOKEN": phone["agent_token"]},  # never in argv
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            try:
                # The batch's rounds have started on the device: its runner is running there.
                # (`--batch`: the runner measuring, not a checksum of ort_runner.py before it is pushed.)
                wait_until(lambda: _runs_on(emu.proc.pid, "ort_runner.py --batch"),
                           what="the batch running on the device", timeout_s=120, interval_s=0.02,
                           alive=[agent])  # fmt: skip
                # The phone vanishes while it measures (USB pulled, adbd killed): no CLSE, the link just ends.
                emu.proc.kill()
                wait_until(lambda: given_back() is not None, what="the batch given back", timeout_s=120,
                           alive=[agent])  # fmt: skip
                assert agent.poll() is None  # still there, waiting for its phone
            finally:
                code = stop_process(agent, timeout_s=60)
        out = agent.stdout.read() if agent.stdout else ""
        assert code == 0, out[-2000:]
        errors = given_back()
        assert errors is not None
        # The reason is the lost link (adb's words for it), not just "unavailable", which every give-back says.
        assert all(re.search(r"closed the connection|cannot connect to|reset by peer", e) for e in errors), errors
        assert admin.get(f"/v1/profiling-runs/{run['id']}").json()["failed"] == 0


def _jobs_given_back(db_url: str):  # type: ignore[no-untyped-def]
    """A probe: the last errors of the jobs once every job is queued again with no attempt spent, else None."""

    def probe() -> list[str] | None:
        engine = make_engine(db_url)
        try:
            with make_sessionmaker(engine)() as s:
                rows = s.execute(select(Job.status, Job.attempts, Job.last_error)).all()
        finally:
            engine.dispose()
        if rows and all(r.status == "queued" and r.attempts == 0 and r.last_error for r in rows):
            return [r.last_error for r in rows]
        return None

    return probe
