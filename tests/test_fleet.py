"""One host serving two devices: a local worker and an android worker (through the emulator)."""

import json
import subprocess
import sys

from tests.emulator_harness import running_emulator
from tests.service_harness import register, running_service, start_run, wait_for_run


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
