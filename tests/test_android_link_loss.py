"""A phone that drops off mid-batch (cable, Wi-Fi, reboot) fails no job: the batch is given back, the agent
waits for the phone with backoff instead of leasing, prepares it afresh when it is back, and the run
publishes. All real processes: the service, the Android agent, the ADB emulator behind a cuttable link."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.emulator_harness import running_emulator
from tests.net_proxy import CuttableProxy
from tests.service_harness import free_port, register, running_service, start_run, wait_for_run
from tests.waiting import wait_until

SPACE = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["ir_k3_e1", "ir_k5_e6", "skip"]}
# Long enough that the link is cut while the runner measures, not between batches.
CONFIG = {"threads": 1, "warmup": 2, "rounds": 10, "runs_per_round": 40}
LEASE_S = 4.0


def test_a_link_lost_for_longer_than_a_lease_fails_no_job_and_the_run_publishes(tmp_path):
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path, lease_seconds=LEASE_S) as svc, \
            svc.client() as admin:  # fmt: skip
        phone = register(admin, "wifi-phone", platform="android")
        run = start_run(admin, phone["id"], SPACE, CONFIG)
        with running_emulator(tmp_path / "sandbox") as emu:
            link = CuttableProxy((emu.host, emu.port), free_port())
            link.start()
            log_path = tmp_path / "agent.log"
            with open(log_path, "w") as log:
                agent = subprocess.Popen(
                    [sys.executable, "-m", "dnas", "agent", "android", "--server", svc.url,
                     "--adb", f"127.0.0.1:{link.port}", "--key", str(tmp_path / "adbkey"),
                     "--cache-dir", str(tmp_path / "cache"), "--exit-when-idle", "--wait", "1"],
                    stdout=log, stderr=subprocess.STDOUT,
                    env=os.environ | {"DNAS_AGENT_TOKEN": phone["agent_token"]},
                )  # fmt: skip
            try:
                workdir = emu.sandbox / "data/local/tmp/dnas"
                wait_until(lambda: (workdir / "request.json").exists(), what="the batch on the device",
                           timeout_s=300, alive=[agent])  # fmt: skip
                link.cut()  # mid-batch: the runner is loading or measuring
                cut_at = time.monotonic()
                text = lambda: log_path.read_text(errors="replace")  # noqa: E731
                wait_until(lambda: "device unavailable, batch given back" in text(), what="the batch given back",
                           timeout_s=120, alive=[agent])  # fmt: skip
                # While it is away the phone "reboots" into other governors; the context must say so after.
                for governor in emu.sandbox.glob("sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"):
                    governor.write_text("performance\n")
                wait_until(lambda: time.monotonic() - cut_at > 1.5 * LEASE_S
                           and text().count("device still unavailable") >= 2,
                           what="the link down for longer than a lease, the agent retrying",
                           timeout_s=120, alive=[agent])  # fmt: skip
                during = admin.get(f"/v1/profiling-runs/{run['id']}").json()
                assert during["failed"] == 0 and during["status"] != "failed", during
                link.start()  # the phone is back
                assert agent.wait(timeout=600) == 0, text()[-3000:]
            finally:
                if agent.poll() is None:
                    agent.kill()
                link.cut()
            calls = (emu.sandbox / "emulator/cmd.log").read_text().splitlines()
        done = wait_for_run(admin, run["id"])
        assert done["status"] == "published" and done["failed"] == 0, done
        log_text = text()
        assert "agent stopped: " in log_text and ", 0 failed" in log_text, log_text[-2000:]
        assert "device back and prepared again" in log_text
        # Prepared twice (at start and after the reconnect), switched off once at exit.
        assert calls.count("power set-fixed-performance-mode-enabled true") == 2, calls
        entries = admin.get(f"/v1/devices/{phone['id']}/latency-tables/latest").json()["entries"]
        assert entries and all(set(e["context"]["governors"].values()) == {"performance"} for e in entries)
