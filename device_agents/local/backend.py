"""This host's CPU: onnxruntime in a long-lived child process, so a model that crashes the runtime fails one
job and the agent carries on with a fresh child."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from device_agents.backend import MeasurementError, Timing

RUNNER = "device_agents.runners.ort_runner"


class LocalBackend:
    name = "local"

    def __init__(self, cpus: list[int] | None = None, timeout_s: float = 600.0) -> None:
        self.cpus = cpus
        self.timeout_s = timeout_s
        self._child: subprocess.Popen[str] | None = None

    def fingerprint(self) -> dict[str, Any]:
        import onnxruntime

        return {
            "model": platform.node() or "localhost",
            "soc": _cpu_model(),
            "os": f"{platform.system()} {platform.release()}",
            "runtime": "onnxruntime",
            "runtime_version": onnxruntime.__version__,
            "cores": os.cpu_count(),
            "extra": {"machine": platform.machine(), "python": platform.python_version()},
        }

    def _start(self) -> subprocess.Popen[str]:
        if self._child is None or self._child.poll() is not None:

            def pin() -> None:
                if self.cpus:
                    os.sched_setaffinity(0, self.cpus)

            self._child = subprocess.Popen(
                [sys.executable, "-m", RUNNER, "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=pin if self.cpus else None,
            )
        return self._child

    def measure(self, model: Path, *, threads: int, warmup: int, runs: int) -> Timing:
        child = self._start()
        assert child.stdin and child.stdout
        request = {"model": str(model), "threads": threads, "warmup": warmup, "runs": runs}
        try:
            child.stdin.write(json.dumps(request) + "\n")
            child.stdin.flush()
        except BrokenPipeError:
            self._reap()
            raise MeasurementError("the runner process died before the job started") from None
        timer = threading.Timer(self.timeout_s, child.kill)
        timer.start()
        try:
            line = child.stdout.readline()
        finally:
            timer.cancel()
        if not line:
            stderr = self._reap()
            raise MeasurementError(f"the runner process died while measuring: {stderr[-500:] or 'no output'}")
        out = json.loads(line)
        if "error" in out:
            raise MeasurementError(out["error"])
        context = out["context"] | {"backend": "local", "cpus": self.cpus}
        return Timing(samples_us=out["samples_us"], context=context)

    def _reap(self) -> str:
        child, self._child = self._child, None
        if child is None:
            return ""
        child.kill()
        _, err = child.communicate()
        return err or ""

    def close(self) -> None:
        if self._child is not None and self._child.poll() is None:
            assert self._child.stdin
            self._child.stdin.close()
            try:
                self._child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._child.kill()
        self._child = None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
