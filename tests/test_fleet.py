"""One host serving two devices: a local worker and an android worker (through the emulator)."""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from sqlalchemy import func, select

from db.engine import make_engine, make_sessionmaker
from db.models import Job, Measurement
from tests.emulator_harness import running_emulator
from tests.net_proxy import CuttableProxy
from tests.service_harness import free_port, register, running_service, start_run, wait_for_run

FORMERLY_MISSING = {"thermal_wait": 123.0, "batch_size": 7, "protocol": 1, "log_http": True}


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


def _fleet(tmp_path, *workers: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    config = tmp_path / "fleet.json"
    config.write_text(json.dumps(list(workers)))
    return subprocess.run([sys.executable, "-m", "dnas", "agent", "fleet", str(config), "--exit-when-idle",
                           "--wait", "0", "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_an_unknown_or_invalid_fleet_key_is_refused_naming_it(tmp_path):
    """A misspelt option used to be ignored: the worker silently ran with the default."""
    worker = {"backend": "android", "server": "http://127.0.0.1:9", "token": "t", "adb": "127.0.0.1:5555"}
    proc = _fleet(tmp_path, worker | {"thermal_wiat": 30})
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {tmp_path / 'fleet.json'}: worker 0 (android): unknown key 'thermal_wiat'"
    proc = _fleet(tmp_path, {"backend": "local", "server": "http://127.0.0.1:9", "token": "t"},
                  {"backend": "local", "server": "http://127.0.0.1:9", "token": "t", "batch_size": 0})  # fmt: skip
    assert proc.returncode == 1
    assert "worker 1 (local): batch_size: Input should be greater than or equal to 1" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_every_command_line_option_is_a_fleet_key():
    """`dnas agent local|android` and a fleet entry validate into the same models: no option of one is missing
    from the other."""
    import typer

    from device_agents.settings import BACKENDS
    from dnas.agent_cli import app

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for backend, model in BACKENDS.items():
        options = {p.name for p in commands[backend].params}
        assert options == set(model.model_fields) - {"backend"}, backend
    assert set(FORMERLY_MISSING) | {"token_file"} <= set(BACKENDS["android"].model_fields)


def test_the_formerly_missing_options_reach_each_worker(tmp_path):
    """thermal wait, batch size, protocol, header logging and a token file, set in a fleet file, are what the
    built agents run with (no device is contacted to build them)."""
    from device_agents.fleet import make_agents
    from device_agents.settings import load_fleet

    (tmp_path / "phone.token").write_text("phone-secret\n")
    config = tmp_path / "fleet.json"
    config.write_text(json.dumps([
        {"backend": "android", "server": "http://127.0.0.1:9", "token_file": str(tmp_path / "phone.token"),
         "adb": "127.0.0.1:5555", "cooldown": 2.5, **FORMERLY_MISSING},
        {"backend": "local", "server": "http://127.0.0.1:9", "token": "host-secret", "cpus": [0]},
    ]))  # fmt: skip
    phone, host = make_agents(load_fleet(config, {"wait": 3.0}), tmp_path / "cache")
    assert phone.backend.thermal_wait_s == 123.0 and phone.backend.cooldown_s == 2.5
    assert (phone.batch_size, phone.batches, phone.wait_seconds) == (7, False, 3.0)  # protocol 1: one job a lease
    assert phone.client.http.headers["authorization"] == "Bearer phone-secret"
    assert phone.client.http.event_hooks["response"]  # every exchange logged, the token as a fingerprint
    assert (host.batch_size, host.batches, host.backend.cpus) == (500, True, [0])
    assert host.client.http.headers["authorization"] == "Bearer host-secret"
    assert not host.client.http.event_hooks["response"]


def test_a_fleet_worker_with_a_token_file_batches_and_logs_headers_as_told(tmp_path):
    """End to end through a real service: the token comes from the file, batches are at most batch_size jobs,
    and every call is logged with its headers."""
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as svc, svc.client() as admin:
        device = register(admin, "from-file")
        run = start_run(admin, device["id"])
        (tmp_path / "host.token").write_text(device["agent_token"] + "\n")
        proc = _fleet(tmp_path, {"backend": "local", "server": svc.url, "token_file": str(tmp_path / "host.token"),
                                 "cpus": [1], "batch_size": 2, "log_http": True, "wait": 2}, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert wait_for_run(admin, run["id"])["status"] == "published"
    batches = [int(line.split("batch of ")[1].split()[0]) for line in proc.stderr.splitlines() if "batch of " in line]
    assert batches and max(batches) == 2, batches
    assert "http POST /v1/agent/lease" in proc.stderr and "authorization: bearer " in proc.stderr.lower()
    assert device["agent_token"] not in proc.stderr


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
            fleet = _start_fleet(config, tmp_path / "cache", out)
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


def test_a_worker_whose_phone_is_away_at_start_retries_and_says_so_on_the_dashboard(tmp_path):
    """A phone unplugged when the fleet starts used to end its worker for good. Now the worker starts again
    with backoff, the log and the device's page say why, and once the phone is there the run is measured."""
    from types import SimpleNamespace

    from tests.test_dashboard_http import sign_in
    from tests.waiting import wait_until

    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as svc, svc.client() as admin:
        phone = register(admin, "late-phone", platform="android")
        run = start_run(admin, phone["id"])
        port = free_port()  # where the phone will be: nothing listens there yet
        config = tmp_path / "fleet.json"
        config.write_text(json.dumps([{"backend": "android", "server": svc.url, "token": phone["agent_token"],
                                       "adb": f"127.0.0.1:{port}", "key": str(tmp_path / "adbkey")}]))  # fmt: skip
        log = tmp_path / "fleet.log"
        with open(log, "w") as out:
            fleet = _start_fleet(config, tmp_path / "cache", out)
            try:
                _wait_for_text(log, "starting it again in", fleet)
                device_url = f"/v1/devices/{phone['id']}"
                problem = wait_until(lambda: admin.get(device_url).json()["agent_problem"],
                                     what="the problem on the device", timeout_s=60, alive=[fleet])  # fmt: skip
                assert "refused its device" in problem["problem"] and f"127.0.0.1:{port}" in problem["problem"]
                assert problem["retry_at"] > problem["reported_at"]
                browser = sign_in(SimpleNamespace(url=svc.url), svc.admin_token)
                try:
                    page = browser.get(f"/ui/devices/{phone['id']}").text
                    overview = browser.get("/ui/").text
                finally:
                    browser.close()
                assert "retrying" in page and f"127.0.0.1:{port}" in page
                assert "retrying" in overview
                with running_emulator(tmp_path / "sandbox", "--port", str(port)):  # the phone is plugged in
                    assert fleet.wait(timeout=600) == 0, log.read_text()[-3000:]
            finally:
                if fleet.poll() is None:
                    fleet.kill()
        assert wait_for_run(admin, run["id"])["status"] == "published"
        assert admin.get(f"/v1/devices/{phone['id']}").json()["agent_problem"] is None  # its fingerprint cleared it
    assert "android  done" in log.read_text()


def test_a_worker_whose_lease_is_answered_with_a_web_page_starts_again(tmp_path, caplog):
    """A proxy's page answered 200 to a lease (not JSON) used to end the worker for good: it starts again
    after its backoff, says why, and measures the run; its next start clears the problem it reported."""
    import logging
    import signal

    from device_agents.fleet import run_fleet
    from device_agents.settings import LocalAgentSettings
    from tests.faulty_service import admin_client, serving

    caplog.set_level(logging.INFO)
    with serving(tmp_path, "/v1/agent/lease", "html") as (base, app), admin_client(base) as admin:
        device = register(admin, "behind-a-portal")
        run = start_run(admin, device["id"])
        worker = LocalAgentSettings(server=base, token=device["agent_token"], cpus=[1], wait=1, exit_when_idle=True)
        handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        try:
            [stats] = run_fleet([worker], tmp_path / "cache")  # the fleet's signal handlers, in this process
        finally:
            signal.signal(signal.SIGINT, handlers[0])
            signal.signal(signal.SIGTERM, handlers[1])
        assert app.second.is_set() and stats.done > 0, caplog.text[-3000:]
        assert wait_for_run(admin, run["id"])["status"] == "published"
        assert admin.get(f"/v1/devices/{device['id']}").json()["agent_problem"] is None
    assert "worker 0 (local) failed: JSONDecodeError" in caplog.text
    assert "starting it again in 5 s" in caplog.text


def _start_fleet(config: Path, cache: Path, out: IO[str]) -> subprocess.Popen:
    """`dnas agent fleet` on this file, exiting when idle, its log into `out`."""
    return subprocess.Popen(
        [sys.executable, "-m", "dnas", "agent", "fleet", str(config), "--exit-when-idle", "--wait", "2",
         "--cache-dir", str(cache)],
        stdout=out, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
