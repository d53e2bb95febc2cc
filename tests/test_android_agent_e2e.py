"""Service + android agent + ADB emulator, all real processes: a run completes and its table is plausible."""

import os
import subprocess
import sys

from device_agents.emulator.perf_test_standin import write_build
from tests.emulator_harness import require_c_compiler, running_emulator
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
                [sys.executable, "-m", "dnas", "agent", "android", "--server", svc.url, "--adb", emu.address,
                 "--key", str(tmp_path / "adbkey"), "--cache-dir", str(tmp_path / "cache"), "--exit-when-idle",
                 "--wait", "2"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env=os.environ | {"DNAS_AGENT_TOKEN": phone["agent_token"]},  # never argv: `ps` shows it
            )  # fmt: skip
            out, _ = agent.communicate(timeout=600)
            assert agent.returncode == 0, out
            # One process per batch: the runner, its rounds module and the request; models cached by checksum.
            workdir = emu.sandbox / "data/local/tmp/dnas"
            assert sorted(p.name for p in workdir.iterdir()) == ["models", "ort_runner.py", "request.json",
                                                                 "rounds.py"]  # fmt: skip
            assert all(len(p.stem) == 64 for p in (workdir / "models").iterdir())

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
            assert entry["context"]["method"] == "interleaved" and entry["context"]["taskset"]
            # Both agents run on this host: same order of magnitude, op by op.
            ratio = entry["median_us"] / host_table[key]["median_us"]
            assert 0.1 < ratio < 10, (key, ratio)


def test_perf_test_runner_on_a_stock_phone_publishes_a_table(tmp_path):
    """The stand-in prints what onnxruntime_perf_test prints, driven by the real onnxruntime: pushing (with
    the C++ runtime the build links), parsing and the rounds as separate visits all run for real."""
    require_c_compiler()  # the build links libc++_shared.so only when it is a real ELF
    space = {**SPACE, "candidates": ["skip"]}  # few models: each visit is a process (a Python one, here)
    config = {"threads": 1, "warmup": 1, "rounds": 2, "runs_per_round": 3}
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as svc, svc.client() as admin:
        phone = register(admin, "stock-phone", platform="android")
        body = {"device_id": phone["id"], "space": space, "config": config, "anchors": 0}
        run = admin.post("/v1/profiling-runs", json=body).raise_for_status().json()
        build = write_build(tmp_path / "perf-test-build")
        with running_emulator(tmp_path / "sandbox", "--stock") as emu:
            agent = subprocess.run(
                [sys.executable, "-m", "dnas", "agent", "android", "--server", svc.url, "--adb", emu.address,
                 "--key", str(tmp_path / "adbkey"), "--runner", "perf-test", "--perf-test-dir", str(build),
                 "--cache-dir", str(tmp_path / "cache"), "--exit-when-idle", "--wait", "2"],
                capture_output=True, text=True, timeout=600,
                env=os.environ | {"DNAS_AGENT_TOKEN": phone["agent_token"]},
            )  # fmt: skip
            assert agent.returncode == 0, agent.stderr[-3000:]
            pushed = sorted(p.name for p in (emu.sandbox / "data/local/tmp/dnas").iterdir())
        assert wait_for_run(admin, run["id"])["status"] == "published"
        assert {"onnxruntime_perf_test", "visits.sh", "models.txt"} <= set(pushed)
        assert "libc++_shared.so" in pushed  # the C++ runtime the binary links went with it
        device = admin.get(f"/v1/devices/{phone['id']}").json()
        assert device["fingerprint"]["runtime"] == "onnxruntime_perf_test"
        assert device["fingerprint"]["runtime_version"] == (build / "VERSION_NUMBER").read_text().strip()
        table = _table(admin, phone["id"])
        assert table
        for entry in table.values():
            ctx = entry["context"]
            assert ctx["method"] == "separate visits" and ctx["runtime"] == "onnxruntime_perf_test"
            assert entry["n"] == 6 and len(ctx["visit_min_us"]) == 2
            assert "P50" in ctx["fields"]["round_medians_us"] and ctx["warmup"] == 1
            assert ctx["performance_mode"] is False and "Failure" in ctx["performance_mode_detail"]
