"""A second SIGTERM during a long batch: the agent stops at the next visit or round and gives the batch back
at once, not after the batch (an Android batch of separate visits can last hours), and exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from db.engine import make_engine, make_sessionmaker
from db.models import Job
from device_agents.emulator.perf_test_standin import write_build
from tests.emulator_harness import require_c_compiler, running_emulator
from tests.service_harness import AgentProcess, register, running_service, start_agent
from tests.waiting import wait_until

# Far longer than the bounded waits below, measured to the end: 1000 rounds of 10 timed runs of every model.
LONG = {"threads": 1, "warmup": 1, "rounds": 1000, "runs_per_round": 10}


def _logged(proc: subprocess.Popen, log: Path, text: str) -> None:
    wait_until(lambda: text in log.read_text(errors="replace"), what=f"{text!r} in the agent's log", timeout_s=300,
               alive=[proc])  # fmt: skip


def _stop_twice(proc: subprocess.Popen, log: Path) -> str:
    proc.send_signal(signal.SIGTERM)
    _logged(proc, log, "finishing the current work")
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    return log.read_text(errors="replace")


def _jobs(db_url: str, device_id: int) -> list[tuple[str, int]]:
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        rows = [(str(status), n) for status, n in s.execute(select(Job.status, Job.attempts)
                                                          .where(Job.device_id == device_id))]  # fmt: skip
    engine.dispose()
    return rows


def _assert_given_back(admin, db_url: str, device_id: int, run_id: int) -> None:
    run = admin.get(f"/v1/profiling-runs/{run_id}").raise_for_status().json()
    assert (run["status"], run["done"], run["failed"]) == ("running", 0, 0), run
    jobs = _jobs(db_url, device_id)
    assert jobs and {status for status, _ in jobs} == {"queued"}, jobs  # requeued now, not at lease expiry


def test_second_sigterm_mid_batch_gives_a_local_batch_back_at_the_next_round(tmp_path):
    db_url = f"sqlite:///{tmp_path / 's.db'}"
    space = {"resolution": 64, "width": 0.5, "num_classes": 10, "candidates": ["ir_k3_e1", "ir_k5_e6", "skip"]}
    with running_service(db_url, tmp_path) as svc, svc.client() as admin:
        device = register(admin, "long-batch")
        body = {"device_id": device["id"], "space": space, "config": LONG, "anchors": 0}
        run = admin.post("/v1/profiling-runs", json=body).raise_for_status().json()
        agent: AgentProcess = start_agent(svc, device["agent_token"], tmp_path, "--cpus", "1", "--wait", "2")
        _logged(agent, agent.log_path, "measuring ")
        out = _stop_twice(agent, agent.log_path)
        assert "given back" in out, out[-3000:]
        _assert_given_back(admin, db_url, device["id"], run["id"])


def test_second_sigterm_mid_batch_gives_an_android_batch_back_at_the_next_visit(tmp_path):
    """perf-test's separate visits: one process per model per round, the batch that lasts hours on a phone."""
    require_c_compiler()
    db_url = f"sqlite:///{tmp_path / 's.db'}"
    space = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["skip"]}
    with running_service(db_url, tmp_path) as svc, svc.client() as admin:
        phone = register(admin, "stock-phone", platform="android")
        body = {"device_id": phone["id"], "space": space, "config": LONG, "anchors": 0}
        run = admin.post("/v1/profiling-runs", json=body).raise_for_status().json()
        build = write_build(tmp_path / "perf-test-build")
        log = tmp_path / "agent.log"
        with running_emulator(tmp_path / "sandbox", "--stock") as emu, open(log, "w") as sink:
            agent = subprocess.Popen(
                [sys.executable, "-m", "dnas", "agent", "android", "--server", svc.url, "--adb", emu.address,
                 "--key", str(tmp_path / "adbkey"), "--runner", "perf-test", "--perf-test-dir", str(build),
                 "--cache-dir", str(tmp_path / "cache"), "--wait", "2"],
                stdout=sink, stderr=subprocess.STDOUT, text=True,
                env=os.environ | {"DNAS_AGENT_TOKEN": phone["agent_token"]},
            )  # fmt: skip
            _logged(agent, log, "batch round 1/1000")
            out = _stop_twice(agent, log)
        assert "stopped at a visit" in out and "given back" in out, out[-3000:]
        _assert_given_back(admin, db_url, phone["id"], run["id"])
