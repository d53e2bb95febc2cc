"""Service + android agent + ADB emulator, all real processes: a run completes and its table is plausible."""

import subprocess
import sys

from tests.emulator_harness import running_emulator
from tests.service_harness import register, running_service, start_agent, start_run, wait_for_run

SPACE = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["ir_k3_e1", "ir_k5_e6", "skip"]}
CONFIG = {"threads": 1, "warmup": 3, "runs": 20}


def _table(admin, device_id: int) -> dict:
    return {e["key"]: e for e in admin.get(f"/v1/devices/{device_id}/latency-tables/latest").json()["entries"]}


def test_android_agent_through_emulator_publishes_a_plausible_table(tmp_path):
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as svc, svc.client() as admin:
        phone = register(admin, "emulated-phone", platform="android")
        host = register(admin, "this-host")
        phone_run = start_run(admin, phone["id"], SPACE, CONFIG)
        host_run = start_run(admin, host["id"], SPACE, CONFIG)

        with running_emulator(tmp_path / "sandbox") as emu:
            agent = subprocess.Popen(
                [sys.executable, "-m", "dnas", "agent", "android", "--server", svc.url, "--token",
                 phone["agent_token"], "--adb", emu.address, "--key", str(tmp_path / "adbkey"),
                 "--cache-dir", str(tmp_path / "cache"), "--exit-when-idle", "--wait", "2"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            out, _ = agent.communicate(timeout=600)
            assert agent.returncode == 0, out
            # Models were cleaned up after each run; only the runner stays on the device.
            assert sorted(p.name for p in (emu.sandbox / "data/local/tmp/dnas").iterdir()) == [
                "models",
                "ort_runner.py",
            ]
            assert not list((emu.sandbox / "data/local/tmp/dnas/models").iterdir())

        local = start_agent(svc, host["agent_token"], tmp_path, "--exit-when-idle", "--wait", "2")
        assert local.wait(timeout=600) == 0
        assert wait_for_run(admin, phone_run["id"])["status"] == "published"
        assert wait_for_run(admin, host_run["id"])["status"] == "published"

        device = admin.get(f"/v1/devices/{phone['id']}").json()
        assert device["fingerprint"]["model"] == "dnas-emulator"
        assert device["fingerprint"]["os"] == "Android 14"
        phone_table, host_table = _table(admin, phone["id"]), _table(admin, host["id"])
        assert phone_table.keys() == host_table.keys()
        for key, entry in phone_table.items():
            assert entry["median_us"] > 0 and entry["context"]["backend"] == "android"
            # Both agents run on this host: same order of magnitude, op by op.
            ratio = entry["median_us"] / host_table[key]["median_us"]
            assert 0.1 < ratio < 10, (key, ratio)
