"""The Android agent against what a real phone does: USB, a stock phone, thermal throttling, a perf-test
build that needs its C++ runtime, files pushed by checksum. All through the ADB device emulator."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from device_agents.android import device_state
from device_agents.android.backend import AndroidBackend, DeviceUnfit
from device_agents.android.connection import AdbConnection, AdbError
from device_agents.android.perf_test import PerfTestBuildError, build_files
from device_agents.backend import BatchPlan, DeviceUnavailable, MeasurementError, Timing
from device_agents.emulator import perf_test_standin
from device_agents.emulator.perf_test_standin import GENERATIONS, write_build
from device_agents.emulator.usb import EmulatedUsbTransport
from profiler_service.local_server import stop_process
from search.space.enumerate import enumerate_ops
from search.space.export import ExportCache
from search.space.macro import get_space
from tests.emulator_harness import require_c_compiler, running_emulator

SERIAL = "EMULATOR0001"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    cache = ExportCache(tmp_path_factory.mktemp("onnx"))
    specs = list(enumerate_ops(get_space(resolution=32, width=0.25, num_classes=10, candidates=("skip",))).ops.values())
    return {str(i): cache.get(spec) for i, spec in enumerate(specs[:3])}


def test_usb_code_path_through_a_transport_the_emulator_serves(tmp_path, models):
    bus = tmp_path / "usb"
    with running_emulator(tmp_path / "sandbox", "--usb-bus", str(bus)) as emu:
        conn = AdbConnection(serial=SERIAL, key_path=tmp_path / "adbkey",
                             usb_transport=lambda s, t: EmulatedUsbTransport.find_adb(bus, s, t))  # fmt: skip
        assert conn.name == f"usb:{SERIAL}"
        assert conn.getprop("ro.serialno") == SERIAL
        assert conn.shell("exit 4").returncode == 4
        blob = os.urandom(300_000)  # many transfers each way
        (tmp_path / "blob").write_bytes(blob)
        conn.push(tmp_path / "blob", "/data/local/tmp/blob")
        assert (emu.sandbox / "data/local/tmp/blob").read_bytes() == blob

        backend = AndroidBackend(conn)
        assert backend.fingerprint()["extra"]["adb"] == f"usb:{SERIAL}"
        out = backend.measure_batch(models, BatchPlan(threads=1, warmup=1, rounds=3, runs_per_round=2, seed=5))
        assert all(isinstance(t, Timing) and len(t.round_samples_us or []) == 3 for t in out.values()), out
        backend.close()

        wrong = AdbConnection(serial="NOSUCHPHONE", key_path=tmp_path / "adbkey",
                              usb_transport=lambda s, t: EmulatedUsbTransport.find_adb(bus, s, t))  # fmt: skip
        with pytest.raises(AdbError, match="no USB device with serial NOSUCHPHONE"):
            wrong.shell("true")


def test_a_command_quiet_for_longer_than_the_transport_timeout_still_answers(tmp_path):
    """adb-shell 0.4.4's TCP and USB bulk reads raise once `transport_timeout_s` (10 s here) passes without a
    packet, and never retry, so `read_timeout_s` did not apply: any command silent for 10 s failed (a protocol-1
    run, a runner that prints only at the end). On the device the command is quiet for 15 s, over both links
    at once."""
    bus = tmp_path / "usb"
    with running_emulator(tmp_path / "sandbox", "--usb-bus", str(bus)) as emu:
        tcp = AdbConnection(tcp=emu.address, key_path=tmp_path / "adbkey")
        usb = AdbConnection(serial=SERIAL, key_path=tmp_path / "adbkey",
                            usb_transport=lambda s, t: EmulatedUsbTransport.find_adb(bus, s, t))  # fmt: skip
        assert tcp.transport_timeout_s == usb.transport_timeout_s == 10.0
        for conn in (tcp, usb):  # connected (and the key made) before the two run together
            assert conn.shell("true").returncode == 0
        with ThreadPoolExecutor(2) as pool:
            quiet = [pool.submit(conn.shell, "sleep 15; echo woke; exit 3", 60) for conn in (tcp, usb)]
            answers = [future.result() for future in quiet]
        for conn in (tcp, usb):
            conn.close()
    assert [(a.output.strip(), a.returncode) for a in answers] == [("woke", 3), ("woke", 3)]


def test_real_libusb_path_imports_and_says_what_to_check(tmp_path):
    """The default USB transport is adb-shell's own (libusb1 installed with adb-shell[usb]); with no such phone
    the error says what to check, not an ImportError."""
    with pytest.raises(AdbError, match=r"no USB device with serial NOPHONE.*USB debugging"):
        AdbConnection(serial="NOPHONE", key_path=tmp_path / "adbkey").shell("true")


def test_stock_phone_is_refused_at_start_with_what_it_lacks(tmp_path):
    with running_emulator(tmp_path / "sandbox", "--stock") as emu:
        proc = subprocess.run(
            [sys.executable, "-m", "dnas", "agent", "android", "--server", "http://127.0.0.1:9", "--adb", emu.address,
             "--key", str(tmp_path / "adbkey")],
            capture_output=True, text=True, timeout=120, env=os.environ | {"DNAS_AGENT_TOKEN": "t"},
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: dnas-emulator (127.0.0.1:")
    assert "has no python3 in its adb shell" in message and "--runner perf-test" in message


def test_perf_test_build_without_its_cxx_runtime_or_for_another_abi_is_refused(tmp_path):
    require_c_compiler()
    build = write_build(tmp_path / "build")  # a real ELF that links the NDK's C++ runtime
    assert {p.name for p in build.iterdir()} == {"onnxruntime_perf_test", "libc++_shared.so", "VERSION_NUMBER"}
    assert sorted(p.name for p in build_files(build, "x86_64")) == ["libc++_shared.so", "onnxruntime_perf_test"]
    (build / "libc++_shared.so").rename(tmp_path / "libc++_shared.so")
    with pytest.raises(PerfTestBuildError, match=r"needs libc\+\+_shared.so.*NDK"):
        build_files(build, "x86_64")
    (tmp_path / "libc++_shared.so").rename(build / "libc++_shared.so")
    with pytest.raises(PerfTestBuildError, match="built for x86_64, the device is arm64-v8a"):
        build_files(build, "arm64-v8a")


def test_perf_test_build_is_pushed_by_checksum_and_replaced_when_rebuilt(tmp_path):
    build = write_build(tmp_path / "build")
    with running_emulator(tmp_path / "sandbox", "--stock") as emu:
        conn = AdbConnection(tcp=emu.address, key_path=tmp_path / "adbkey")
        backend = AndroidBackend(conn, runner="perf-test", perf_test_dir=build)
        fp = backend.fingerprint()
        assert fp["runtime"] == "onnxruntime_perf_test" and fp["runtime_version"]
        assert fp["extra"]["performance_mode"] is False  # the stock phone's `cmd` refused it
        binary = build / "onnxruntime_perf_test"
        assert not conn.push_if_changed(binary, "/data/local/tmp/dnas")  # same bytes: not sent again
        binary.write_bytes(binary.read_bytes() + b"\0")  # a rebuild
        assert conn.push_if_changed(binary, "/data/local/tmp/dnas")
        assert (emu.sandbox / "data/local/tmp/dnas/onnxruntime_perf_test").read_bytes() == binary.read_bytes()
        conn.close()


def _standin(generation: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, perf_test_standin.__file__, "--dnas-generation", generation, *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_the_stand_in_answers_help_as_each_upstream_generation_does():
    """What upstream's command_args_parser.cc and main.cc print: the getopt generation (to 1.22) prints its usage
    for -h and --help, exit 255; the absl one (1.23 on) answers -h without a model with one line on stderr and
    255, and --help with absl's flag help and exit 1."""
    old_h, old_help = _standin("getopt", "-h"), _standin("getopt", "--help")
    assert old_h.returncode == old_help.returncode == 255
    assert "-m [test_mode]" in old_h.stdout and "-m [test_mode]" in old_help.stdout
    new_h, new_help = _standin("absl", "-h"), _standin("absl", "--help")
    assert (new_h.returncode, new_h.stdout, new_h.stderr) == (255, "", "See 'onnxruntime_perf_test --help'.")
    assert new_help.returncode == 1 and "-m [test_mode]" not in new_help.stdout
    assert "Flags from onnxruntime/test/perftest/command_args_parser.cc:" in new_help.stdout
    assert "    --m (Specifies the test mode. Value could be 'duration' or 'times'.); default: \"duration\";" in (
        new_help.stdout
    )
    unknown = _standin("absl", "--bogus", "m.onnx")
    assert unknown.returncode == 1 and "Unknown command line flag 'bogus'" in unknown.stderr


@pytest.mark.parametrize("generation", GENERATIONS)
def test_both_perf_test_generations_start_and_measure_on_a_stock_phone(tmp_path, models, generation):
    """onnxruntime 1.23's absl-flags build answers `-h` with one line and 255, which the start check took for a
    binary that does not start: the agent refused every current build. The probe is `--help`, which both
    generations answer with their usage; the fingerprint says which one answered."""
    build = write_build(tmp_path / "build", generation=generation)
    with running_emulator(tmp_path / "sandbox", "--stock") as emu:
        backend = AndroidBackend(AdbConnection(tcp=emu.address, key_path=tmp_path / "adbkey"), runner="perf-test",
                                 perf_test_dir=build, taskset="none")  # fmt: skip
        try:
            assert backend.fingerprint()["extra"]["perf_test_cli"] == generation
            out = backend.measure_batch({"0": models["0"]}, BatchPlan(threads=1, warmup=0, rounds=2,
                                                                      runs_per_round=3, seed=1))  # fmt: skip
        finally:
            backend.close()
    timing = out["0"]
    assert isinstance(timing, Timing) and timing.summary is not None, timing
    assert timing.summary["n"] == 6 and timing.context["method"] == "separate visits"


def test_a_build_that_prints_no_usage_is_refused_at_start(tmp_path):
    build = write_build(tmp_path / "build")
    (build / "onnxruntime_perf_test").write_text("#!/bin/sh\necho 'CANNOT LINK EXECUTABLE: libfoo.so not found'\n"
                                                 "exit 1\n")  # fmt: skip
    with running_emulator(tmp_path / "sandbox", "--stock") as emu:
        backend = AndroidBackend(AdbConnection(tcp=emu.address, key_path=tmp_path / "adbkey"), runner="perf-test",
                                 perf_test_dir=build)  # fmt: skip
        with pytest.raises(DeviceUnfit, match=r"does not start.*printed no usage.*CANNOT LINK"):
            backend.fingerprint()
        backend.close()


def test_batch_waits_out_throttling_and_records_the_device_state(tmp_path, models, caplog):
    caplog.set_level("WARNING", logger="dnas.android")
    with running_emulator(tmp_path / "sandbox", "--cpu-max-khz", "1800000,2800000") as emu:
        state = emu.sandbox / "emulator"
        (state / "thermal_status").write_text("2\n")
        (state / "battery_temperature").write_text("395\n")
        backend = AndroidBackend(AdbConnection(tcp=emu.address, key_path=tmp_path / "adbkey"), thermal_poll_s=0.2)
        fp = backend.fingerprint()
        assert fp["extra"]["taskset"] == "2"  # the core with the highest cpuinfo_max_freq
        assert fp["extra"]["build_fingerprint"].startswith("dnas/") and fp["extra"]["adb_user"] == "shell"
        box: dict = {}
        worker = threading.Thread(
            target=lambda: box.update(out=backend.measure_batch(models, BatchPlan(1, 1, 2, 2, 1)))
        )
        worker.start()
        deadline = time.monotonic() + 60  # the batch waits while Android reports "moderate" throttling
        while sum("waiting for the device to cool" in r.message for r in caplog.records) < 2:
            assert time.monotonic() < deadline and worker.is_alive()
            time.sleep(0.05)
        assert "out" not in box
        (state / "battery_temperature").write_text("341\n")
        (state / "thermal_status").write_text("0\n")
        worker.join(timeout=120)
        ctx = next(iter(box["out"].values())).context
        assert ctx["thermal_wait_s"] > 0 and ctx["still_throttled"] is False
        assert ctx["thermal_status_before"] == 0 and ctx["thermal_status_after"] == 0
        assert ctx["battery_temp_c_before"] == 34.1 and ctx["taskset"] == "2"
        assert ctx["performance_mode"] is True and ctx["governors"] == {"0": "schedutil", "1": "schedutil"}
        backend.close()
        calls = (state / "cmd.log").read_text().splitlines()
        assert calls == [
            "power set-fixed-performance-mode-enabled true",
            "power set-fixed-performance-mode-enabled false",
        ]


def test_a_model_that_fails_to_load_fails_alone(tmp_path, models):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with running_emulator(tmp_path / "sandbox") as emu:
        backend = AndroidBackend(AdbConnection(tcp=emu.address, key_path=tmp_path / "adbkey"), taskset="none")
        out = backend.measure_batch({"bad": bad, **models}, BatchPlan(1, 1, 2, 2, 3))
        backend.close()
    assert isinstance(out["bad"], MeasurementError)
    assert all(isinstance(out[k], Timing) for k in models)


def test_big_cores_are_the_fastest_cluster():
    pixel7 = {0: 1_803_000, 1: 1_803_000, 2: 1_803_000, 3: 1_803_000, 4: 2_348_000, 5: 2_348_000,
              6: 2_850_000, 7: 2_850_000}  # fmt: skip
    assert device_state.Cpus(max_khz=pixel7).big_core_mask() == "c0"
    assert device_state.Cpus(max_khz={0: 1, 1: 1}).big_core_mask() is None
    assert device_state.Cpus().big_core_mask() is None


def test_auto_taskset_gives_each_thread_a_core_fastest_first():
    """One prime core (a Snapdragon 8 Gen 1: cpu7 3.0 GHz, cpu4-6 2.5, cpu0-3 1.8): -x 4 used to share the
    prime core; it gets the prime core and the next cluster. Whole clusters, so never a slow core while a
    faster one of its cluster idles; threads 0 (onnxruntime's default, a thread per core) takes all."""
    one_prime = device_state.Cpus(max_khz={0: 1_800_000, 1: 1_800_000, 2: 1_800_000, 3: 1_800_000,
                                           4: 2_500_000, 5: 2_500_000, 6: 2_500_000, 7: 3_000_000})  # fmt: skip
    masks = {threads: one_prime.fastest_cores_mask(threads) for threads in (1, 2, 4, 5, 8, 0)}
    assert masks == {1: "80", 2: "f0", 4: "f0", 5: "ff", 8: "ff", 0: "ff"}
    assert device_state.Cpus(max_khz={0: 1, 1: 1}).fastest_cores_mask(4) is None


def test_auto_taskset_follows_the_batch_threads_and_is_recorded(tmp_path, models):
    """Through the emulator, on a 'phone' whose cpu1 is the one prime core and cpu2-3 the next cluster (this
    host has no cpu2-3: taskset keeps the cores that exist, cpu1, so nothing runs on the benchmark core)."""
    with running_emulator(tmp_path / "sandbox", "--cpu-max-khz", "1800000,2800000,2400000,2400000") as emu:
        backend = AndroidBackend(AdbConnection(tcp=emu.address, key_path=tmp_path / "adbkey"))
        try:
            assert backend.fingerprint()["extra"]["taskset"] == "2"
            one = backend.measure_batch({"0": models["0"]}, BatchPlan(1, 0, rounds=2, runs_per_round=2, seed=1))
            two = backend.measure_batch({"0": models["0"]}, BatchPlan(2, 0, rounds=2, runs_per_round=2, seed=1))
        finally:
            backend.close()
    assert one["0"].context["taskset"] == "2" and two["0"].context["taskset"] == "e"
    assert "at least 2 for 2 threads" in two["0"].context["taskset_source"]


def test_a_phone_dropping_off_mid_batch_ends_the_batch_at_once_as_the_device_gone(tmp_path, models):
    """adb-shell's TCP reader would spin on a closed socket until its read timeout (ten minutes for a batch):
    the link going away must end the batch as it happens, as the device being unavailable (the agent gives the
    batch back), not as the models failing."""
    with running_emulator(tmp_path / "sandbox") as emu:
        backend = AndroidBackend(AdbConnection(tcp=emu.address, key_path=tmp_path / "adbkey"), taskset="none")
        backend.fingerprint()
        box: dict = {}

        def measure() -> None:
            try:
                box["out"] = backend.measure_batch(models, BatchPlan(1, 1, rounds=1000, runs_per_round=50, seed=1))
            except (DeviceUnavailable, MeasurementError) as exc:
                box["error"] = exc

        worker = threading.Thread(target=measure)
        worker.start()
        deadline = time.monotonic() + 120
        while not (emu.sandbox / "data/local/tmp/dnas/request.json").exists():  # the batch is on the device
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stop_process(emu.proc, timeout_s=10)  # the phone is gone (cable pulled, Wi-Fi dropped)
        gone = time.monotonic()
        worker.join(timeout=120)
    assert not worker.is_alive() and time.monotonic() - gone < 60
    assert isinstance(box["error"], DeviceUnavailable) and "closed the connection" in str(box["error"])
