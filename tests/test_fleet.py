"""One host serving two devices: a local worker and an android worker (through the emulator)."""

import json
import subprocess
import sys
import time

from sqlalchemy import func, select

from db.engine import make_engine, make_sessionmaker
from db.models import Job, Measurement
from tests.emulator_harness import running_emulator
from tests.net_proxy import CuttableProxy
from tests.service_harness import free_port, register, running_service, start_run, wait_for_run


def test_one_host_serves_two_devices(tmp_path):
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as svc, svc.client() as admin:
        a, b = register(admin, "fleet-local"), register(admin, "fleet-phone", platform="android")
        runs = [start_run(admin, a["id"]), start_run(admin, b["id"])]
        with running_emulator(tmp_path / "sandbox") as emu:
            config = tmp_path / "fleet.json"
            config.write_text(json.dumps([
                {"backend": "local", "server": svc.url, "token": a["agent_token"]},
                {"backend": "android", "server": svc.url, "token": b["agent_token"], "adb": emu.address,
                 "key": str(tmp_path / "adbkey")},
            ]))  # fmt: skip
            proc = subprocess.run(
                [sys.executable, "-m", "dnas", "agent", "fleet", str(config), "--exit-when-idle", "--wait", "2",
                 "--cache-dir", str(tmp_path / "cache")],
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert [wait_for_run(admin, r["id"])["status"] for r in runs] == ["published", "published"]
        assert "local    done" in proc.stdout and "android  done" in proc.stdout


def test_bad_fleet_file_is_one_clear_line(tmp_path):
    config = tmp_path / "fleet.json"
    config.write_text(json.dumps([{"backend": "local", "server": "http://127.0.0.1:9"}]))
    proc = subprocess.run([sys.executable, "-m", "dnas", "agent", "fleet", str(config)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {config}: worker 0 is missing token"


def _wait_for_text(path, text: str, proc, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in (path.read_text() if path.exists() else ""):
        assert proc.poll() is None, path.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{text!r} never logged: {path.read_text()[-3000:]}"
        time.sleep(0.1)


def test_network_cut_under_a_fleet_worker_mid_batch_the_run_still_completes(tmp_path):
    """The network drops while a worker works on a batch: its heartbeats and calls fail, the lease runs out,
    and the worker neither dies nor keeps the lost lease alive; when the network is back it leases the jobs
    again (a second attempt) and the run is published with every op measured once."""
    config_body = {"threads": 1, "warmup": 1, "rounds": 20, "runs_per_round": 40}
    db_url = f"sqlite:///{tmp_path / 's.db'}"
    with running_service(db_url, tmp_path, lease_seconds=3) as svc, svc.client() as admin:
        device = register(admin, "cut-off")
        run = start_run(admin, device["id"], config=config_body)
        host, port = svc.url.removeprefix("http://").split(":")
        proxy = CuttableProxy((host, int(port)), free_port())
        proxy.start()
        config = tmp_path / "fleet.json"
        config.write_text(json.dumps([{"backend": "local", "server": proxy.url, "token": device["agent_token"],
                                       "cpus": [1], "retry_for": 3}]))  # fmt: skip
        log = tmp_path / "fleet.log"
        with open(log, "w") as out:
            fleet = subprocess.Popen(
                [sys.executable, "-m", "dnas", "agent", "fleet", str(config), "--exit-when-idle", "--wait", "2",
                 "--cache-dir", str(tmp_path / "cache")],
                stdout=out, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            try:
                _wait_for_text(log, "batch of", fleet)
                proxy.cut()  # mid-batch: the models are downloaded, the rounds are running
                _wait_for_text(log, "cannot lease", fleet)  # done with the cut-off batch, the worker lives on
                proxy.start()  # the network is back
                run = wait_for_run(admin, run["id"], timeout_s=600)
                assert fleet.wait(timeout=120) == 0, log.read_text()[-3000:]
            finally:
                if fleet.poll() is None:
                    fleet.kill()
                proxy.cut()
    assert run["status"] == "published", run
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        attempts = list(s.scalars(select(Job.attempts).where(Job.device_id == device["id"])))
        measured = s.scalar(select(func.count(Measurement.id)).where(Measurement.device_id == device["id"]))
    engine.dispose()
    assert measured == run["total"] == len(attempts)
    assert min(attempts) == 2, attempts  # the cut-off lease was given up, then leased again
