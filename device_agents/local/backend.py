"""This host's CPU: onnxruntime in a long-lived child process, so a model that crashes the runtime fails its
job(s) and the agent carries on with a fresh child."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from device_agents.backend import BatchPlan, MeasurementError, Timing

RUNNER = "device_agents.runners.ort_runner"


class LocalBackend:
    name = "local"
    precisions = ("fp32", "int8")  # onnxruntime's CPU EP runs QDQ models (QLinearConv, QLinearAdd, QGemm)

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
            cpus = self.cpus

            def prepare() -> None:
                # Its own session: a Ctrl-C at the agent's terminal reaches the agent, which finishes the batch,
                # not the runner in the middle of it. And it dies with the agent, never measuring for nobody.
                _die_with_parent()
                if cpus:
                    os.sched_setaffinity(0, cpus)

            self._child = subprocess.Popen(
                [sys.executable, "-m", RUNNER, "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
                preexec_fn=prepare,
            )
        return self._child

    def _send(self, request: dict[str, Any]) -> subprocess.Popen[str]:
        child = self._start()
        assert child.stdin
        try:
            child.stdin.write(json.dumps(request) + "\n")
            child.stdin.flush()
        except BrokenPipeError:
            self._reap()
            raise MeasurementError("the runner process died before the job started") from None
        return child

    def _died(self, doing: str) -> MeasurementError:
        stderr = self._reap()
        return MeasurementError(f"the runner process died while {doing}: {stderr[-500:] or 'no output'}")

    def measure(self, model: Path, *, threads: int, warmup: int, runs: int) -> Timing:
        child = self._send({"model": str(model), "threads": threads, "warmup": warmup, "runs": runs})
        assert child.stdout
        timer = threading.Timer(self.timeout_s, child.kill)
        timer.start()
        try:
            line = child.stdout.readline()
        finally:
            timer.cancel()
        if not line:
            raise self._died("measuring")
        out = json.loads(line)
        if "error" in out:
            raise MeasurementError(out["error"])
        return Timing(samples_us=out["samples_us"], context=out["context"] | self._context())

    def measure_batch(
        self, models: dict[str, Path], plan: BatchPlan, stop: threading.Event | None = None
    ) -> dict[str, Timing | MeasurementError]:
        """All models open in one child, measured in interleaved rounds; once `stop` is set the child is ended
        after its current round and only the models that failed come back. A model that fails to load fails
        alone. A child that dies while loading a model is blamed on that model, and the rest of the batch is
        measured again in a fresh child. A child that dies during the rounds fails the whole batch (every
        model had run its warm-up by then, so this is rare)."""
        failed: dict[str, Timing | MeasurementError] = {}
        todo = dict(models)
        while todo:
            try:
                return failed | self._run_batch(todo, plan, stop or threading.Event())
            except _CrashedLoading as crash:
                failed[crash.key] = crash.error
                del todo[crash.key]
        return failed

    def _run_batch(
        self, models: dict[str, Path], plan: BatchPlan, stop: threading.Event
    ) -> dict[str, Timing | MeasurementError]:
        request = {
            "batch": [{"id": key, "model": str(path)} for key, path in models.items()],
            "threads": plan.threads,
            "warmup": plan.warmup,
            "rounds": plan.rounds,
            "runs_per_round": plan.runs_per_round,
            "seed": plan.seed,
        }
        child = self._send(request)
        assert child.stdout
        out: dict[str, Timing | MeasurementError] = {}
        settled: set[str] = set()
        timer = threading.Timer(self.timeout_s * max(1.0, len(models) / 50), child.kill)
        timer.start()
        try:
            while True:
                line = child.stdout.readline()
                if not line:
                    loading = next((k for k in models if k not in settled), None)
                    if loading is not None:
                        raise _CrashedLoading(loading, self._died(f"loading {models[loading].name}"))
                    err = self._died("measuring the batch in rounds")
                    return {key: out.get(key, err) for key in models}
                msg = json.loads(line)
                if "ready" in msg:
                    settled.add(msg["ready"])
                elif "error" in msg and "id" in msg:
                    settled.add(msg["id"])
                    out[msg["id"]] = MeasurementError(msg["error"])
                elif "error" in msg:
                    raise MeasurementError(msg["error"])
                elif "round_samples_us" in msg:
                    out[msg["id"]] = Timing(round_samples_us=msg["round_samples_us"])
                elif "round" in msg and stop.is_set():  # given back: no result has every round yet
                    self._reap()
                    return {key: err for key, err in out.items() if isinstance(err, MeasurementError)}
                elif msg.get("done"):
                    context = msg["context"] | self._context()
                    for timing in out.values():
                        if isinstance(timing, Timing):
                            timing.context = dict(context)
                    return out
        finally:
            timer.cancel()

    def _context(self) -> dict[str, Any]:
        return {"backend": "local", "cpus": self.cpus}

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


def _die_with_parent() -> None:
    """Linux: SIGTERM when the agent dies (even by SIGKILL); elsewhere the runner exits at EOF on stdin."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _CrashedLoading(Exception):
    def __init__(self, key: str, error: MeasurementError) -> None:
        super().__init__(str(error))
        self.key, self.error = key, error


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
