"""Faults a long-running deployment meets: nothing is lost or doubled, and the service recovers by itself."""

import signal
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from db.engine import make_engine, make_sessionmaker
from db.models import Measurement
from tests import postgres
from tests.emulator_harness import running_emulator
from tests.service_harness import free_port, register, running_service, start_agent, start_run, wait_for_run


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
        run = start_run(admin, device["id"], config={"warmup": 2, "runs": 300})
        agent = start_agent(svc, device["agent_token"], tmp_path, "--wait", "1")
        while admin.get(f"/v1/profiling-runs/{run['id']}").json()["done"] < 3:
            assert agent.poll() is None
        svc.proc.send_signal(signal.SIGKILL)  # no shutdown, no flush: a crash
        svc.proc.wait()
    # The agent keeps retrying with backoff; a new service on the same database and port picks up the run.
    with running_service(db_url, tmp_path, port=port) as svc, svc.client() as admin:
        run = wait_for_run(admin, run["id"], timeout_s=600)
        agent.terminate()
        agent.wait(timeout=60)
        assert run["status"] == "published", run
        assert run["done"] == run["total"]
    measurements, distinct = _counts(db_url)
    assert measurements == distinct == run["total"]


@pytest.mark.postgres
def test_postgres_restarted_under_a_running_service_recovers(tmp_path):
    if not postgres.available():
        pytest.skip("PostgreSQL server binaries not installed")
    with postgres.postgres_cluster() as cluster:
        url = cluster.create_database("restart")
        with running_service(url, tmp_path, workers=2) as svc, svc.client() as admin:
            register(admin, "before")
            cluster.stop()
            down = admin.get("/v1/devices")
            assert down.status_code == 503 and "database is unavailable" in down.json()["detail"]
            cluster.start()
            # No service restart: the pool notices dead connections (pre-ping) and reconnects.
            for _ in range(4):  # every worker process, whichever answers
                assert admin.get("/v1/devices").status_code == 200
            assert register(admin, "after")["name"] == "after"


def test_device_disconnecting_mid_run_fails_its_jobs_with_the_reason(tmp_path):
    space = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["skip"]}
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as svc, svc.client() as admin:
        phone = register(admin, "flaky-phone", platform="android")
        run = start_run(admin, phone["id"], space=space, config={"warmup": 1, "runs": 200})
        with running_emulator(tmp_path / "sandbox") as emu:
            agent = subprocess.Popen(
                [sys.executable, "-m", "dnas", "agent", "android", "--server", svc.url, "--token",
                 phone["agent_token"], "--adb", emu.address, "--key", str(tmp_path / "adbkey"),
                 "--exit-when-idle", "--wait", "1", "--cache-dir", str(tmp_path / "cache")],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            # The batch's rounds have started on the device (the runner's request is there).
            while not (emu.sandbox / "data/local/tmp/dnas/request.json").exists():
                assert agent.poll() is None
        # The phone is gone mid-batch (USB pulled, Wi-Fi dropped): the jobs fail after bounded attempts.
        out, _ = agent.communicate(timeout=600)
        assert agent.returncode == 0, out[-2000:]
        run = wait_for_run(admin, run["id"])
        assert run["status"] == "failed", run
        assert run["done"] + run["failed"] == run["total"]
        assert any("cannot connect" in e or "failed" in e for e in run["errors"]), run["errors"]
