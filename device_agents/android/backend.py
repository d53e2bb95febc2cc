"""Measure on an Android device: push the model (and the runner when missing) to /data/local/tmp, run it,
parse the output, clean up. Two runners: the Python + onnxruntime runner shipped in this package (devices
with Python: Termux, Linux boards) and `onnxruntime_perf_test` built for Android."""

from __future__ import annotations

import json
import logging
import shlex
import time
from pathlib import Path
from typing import Any, Literal

from device_agents.android.connection import AdbConnection, AdbError
from device_agents.android.perf_test import PerfTestParseError, parse_perf_test
from device_agents.backend import MeasurementError, Timing
from device_agents.runners import ort_runner

log = logging.getLogger("dnas.android")

Runner = Literal["python", "perf-test"]
PERF_TEST_FILES = ("onnxruntime_perf_test", "libonnxruntime.so")


class AndroidBackend:
    name = "android"

    def __init__(
        self,
        conn: AdbConnection,
        *,
        runner: Runner = "python",
        workdir: str = "/data/local/tmp/dnas",
        taskset: str | None = None,
        cooldown_s: float = 0.0,
        perf_test_dir: Path | None = None,
        fixed_performance: bool = True,
        run_timeout_s: float = 600.0,
    ) -> None:
        if runner == "perf-test" and perf_test_dir is None:
            raise ValueError(
                "the perf-test runner needs --perf-test-dir with onnxruntime_perf_test and libonnxruntime.so"
            )
        self.conn, self.runner, self.workdir = conn, runner, workdir.rstrip("/")
        self.taskset, self.cooldown_s = taskset, cooldown_s
        self.perf_test_dir = perf_test_dir
        self.fixed_performance = fixed_performance
        self.run_timeout_s = run_timeout_s
        self._ready = False
        self._perf_mode: bool | None = None

    # ---- device facts -------------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        prop = self.conn.getprop
        runtime_version = None
        if self.runner == "python":
            res = self.conn.shell("python3 -c 'import onnxruntime; print(onnxruntime.__version__)'")
            runtime_version = res.output.strip() if res.returncode == 0 else None
        cores = self.conn.shell("nproc")
        return {
            "model": prop("ro.product.model") or None,
            "soc": prop("ro.soc.model") or prop("ro.board.platform") or None,
            "os": f"Android {prop('ro.build.version.release')}",
            "runtime": "onnxruntime" if self.runner == "python" else "onnxruntime_perf_test",
            "runtime_version": runtime_version,
            "cores": int(cores.output.strip()) if cores.returncode == 0 and cores.output.strip().isdigit() else None,
            "extra": {"abi": prop("ro.product.cpu.abi"), "sdk": prop("ro.build.version.sdk"), "adb": self.conn.name,
                      "runner": self.runner},
        }  # fmt: skip

    def _temperature_c(self) -> float | None:
        res = self.conn.shell("cat /sys/class/thermal/thermal_zone0/temp 2>/dev/null")
        text = res.output.strip()
        return int(text) / 1000 if res.returncode == 0 and text.lstrip("-").isdigit() else None

    # ---- set-up -------------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        if self._ready:
            return
        self.conn.check(f"mkdir -p {self.workdir}/models")
        if self.runner == "python":
            self.conn.push(Path(ort_runner.__file__), f"{self.workdir}/ort_runner.py")
        else:
            assert self.perf_test_dir is not None
            for name in PERF_TEST_FILES:
                if not self.conn.exists(f"{self.workdir}/{name}"):
                    self.conn.push(self.perf_test_dir / name, f"{self.workdir}/{name}")
            self.conn.check(f"chmod 755 {self.workdir}/onnxruntime_perf_test")
        if self.fixed_performance:  # Android 11+: steadier clocks without root; harmless where unsupported
            res = self.conn.shell("cmd power set-fixed-performance-mode-enabled true")
            self._perf_mode = res.returncode == 0
        self._ready = True

    # ---- measuring ----------------------------------------------------------------------------------------
    def measure(self, model: Path, *, threads: int, warmup: int, runs: int) -> Timing:
        try:
            self._prepare()
            if self.cooldown_s:
                time.sleep(self.cooldown_s)  # let the SoC cool between operators
            remote = f"{self.workdir}/models/{model.name}"
            self.conn.push(model, remote)
            context: dict[str, Any] = {
                "backend": "android",
                "runner": self.runner,
                "taskset": self.taskset,
                "performance_mode": self._perf_mode,
                "temperature_c": self._temperature_c(),
                "threads": threads,
            }
            try:
                return self._run(remote, threads, warmup, runs, context)
            finally:
                self.conn.shell(f"rm -f {shlex.quote(remote)}")
        except AdbError as exc:
            raise MeasurementError(str(exc)) from exc

    def _pin(self) -> str:
        return f"taskset {shlex.quote(self.taskset)} " if self.taskset else ""

    def _run(self, remote: str, threads: int, warmup: int, runs: int, context: dict[str, Any]) -> Timing:
        if self.runner == "python":
            cmd = (f"cd {self.workdir} && {self._pin()}python3 ort_runner.py {shlex.quote(remote)} "
                   f"--threads {threads} --warmup {warmup} --runs {runs}")  # fmt: skip
            res = self.conn.shell(cmd, timeout_s=self.run_timeout_s)
            if res.returncode != 0:
                raise MeasurementError(f"runner exited {res.returncode}: {res.output[-500:]}")
            try:
                out = json.loads(res.output.strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise MeasurementError(f"runner printed no JSON: {res.output[-300:]!r}") from None
            return Timing(samples_us=out["samples_us"], context=out["context"] | context)
        # -s: without it the tool prints only the average, no percentiles (its README: "Show statistics result").
        cmd = (f"cd {self.workdir} && LD_LIBRARY_PATH=. {self._pin()}./onnxruntime_perf_test -e cpu -m times "
               f"-r {runs} -x {threads} -s -Z -I {shlex.quote(remote)}")  # fmt: skip
        res = self.conn.shell(cmd, timeout_s=self.run_timeout_s)
        if res.returncode != 0:
            raise MeasurementError(f"onnxruntime_perf_test exited {res.returncode}: {res.output[-500:]}")
        try:
            stats = parse_perf_test(res.output)
        except PerfTestParseError as exc:
            raise MeasurementError(str(exc)) from None
        return Timing(samples_us=None, context=context | {"warmup": 1, "runs": runs}, summary=perf_test_summary(stats))

    def close(self) -> None:
        self.conn.close()


def perf_test_summary(stats: dict[str, float]) -> dict[str, Any]:
    """perf_test prints no P10 and no spread: p10 is its minimum (a bound below the true P10) and std is
    estimated from P90 - P50 as for a normal distribution; the result context says so. n is the number of
    runs the tool says it timed, not the number asked for."""
    median = stats["p50_us"]
    p90 = max(stats.get("p90_us", median), median)
    p10 = min(stats.get("min_us", median), median)
    return {
        "median_us": median,
        "mean_us": stats["mean_us"],
        "p10_us": p10,
        "p90_us": p90,
        "std_us": (p90 - median) / 1.2816,
        "n": int(stats["n"]),
    }
