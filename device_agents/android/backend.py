"""Measure on an Android device over adb, with no host adb server.

At start the agent checks that the device can run the chosen runner and refuses, saying what the phone lacks
and how to provide it, rather than registering and failing every job. Two runners:
- `python`: this package's standalone onnxruntime runner (`ort_runner.py` + `rounds.py`), for devices whose
  adb shell has Python with onnxruntime (Linux boards, rooted or custom images). A stock phone has neither.
  A batch is ONE process on the device holding every model open, measured in interleaved rounds, its JSON
  lines streamed back as they are printed.
- `perf-test`: `onnxruntime_perf_test` built for Android (runs on a stock phone). It cannot hold models open
  together, so a batch's rounds are measured as separate visits: one process per model per round, in the
  same random orders as the interleaved rule (rounds.visit_orders), and the context says so.

Files reach the device by checksum (a rebuilt binary replaces the old one; a model already there is not
sent again). Each batch waits while Android reports thermal throttling, records the thermal status and
battery temperature before and after, and is pinned to the big cores unless told otherwise.
"""

from __future__ import annotations

import json
import logging
import shlex
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal

from device_agents.android import device_state
from device_agents.android.connection import AdbConnection, AdbError, AdbLinkError, sha256_file
from device_agents.android.perf_test import (
    FIELDS,
    PERF_TEST,
    PROBE_ARGS,
    PerfTestBuildError,
    PerfTestParseError,
    build_files,
    build_version,
    parse_perf_test,
    probe_generation,
    summarise_visits,
)
from device_agents.backend import BatchPlan, DeviceUnavailable, MeasurementError, Timing
from device_agents.batch_stream import BatchStream
from device_agents.runners import ort_runner
from search.measurement import rounds

log = logging.getLogger("dnas.android")

Runner = Literal["python", "perf-test"]
RUNNER_FILES = (Path(ort_runner.__file__), Path(rounds.__file__))
# One process per visit, in the order given; markers delimit each visit's output and exit status.
VISITS_SH = """# sh visits.sh RUNS THREADS LISTFILE INDEX...: one onnxruntime_perf_test process per visit, in order
runs=$1; threads=$2; list=$3; shift 3
for i in "$@"; do
  model=$(sed -n "${i}p" "$list")
  echo "__DNAS_VISIT $i"
  LD_LIBRARY_PATH=. ./onnxruntime_perf_test -e cpu -m times -r "$runs" -x "$threads" -s -Z -I "$model" 2>&1
  echo "__DNAS_RC $i $?"
done
"""


class _Stopped(Exception):
    """Raised from a stream's line handler when the agent must give the batch back now."""


class DeviceUnfit(Exception):
    """The device cannot run the chosen runner; the message says what it lacks and how to provide it."""


class AndroidBackend:
    name = "android"
    # Both paths run onnxruntime's CPU EP (`-e cpu` for perf_test), which takes QDQ models as they are.
    precisions = ("fp32", "int8")

    def __init__(
        self,
        conn: AdbConnection,
        *,
        runner: Runner = "python",
        workdir: str = "/data/local/tmp/dnas",
        taskset: str | None = "auto",
        cooldown_s: float = 0.0,
        perf_test_dir: Path | None = None,
        runtime_version: str | None = None,
        fixed_performance: bool = True,
        run_timeout_s: float = 600.0,
        thermal_wait_s: float = 600.0,
        thermal_poll_s: float = 10.0,
    ) -> None:
        if runner == "perf-test" and perf_test_dir is None:
            raise ValueError("the perf-test runner needs --perf-test-dir, the folder with onnxruntime_perf_test "
                             "built for Android (and the shared libraries it links)")  # fmt: skip
        self.conn, self.runner, self.workdir = conn, runner, workdir.rstrip("/")
        self.taskset_option = taskset
        self.cooldown_s = cooldown_s
        self.perf_test_dir = perf_test_dir
        self.given_version = runtime_version
        self.fixed_performance = fixed_performance
        self.run_timeout_s = run_timeout_s
        self.thermal_wait_s, self.thermal_poll_s = thermal_wait_s, thermal_poll_s
        self._ready = False
        self._facts: dict[str, Any] = {}
        self._cpus = device_state.Cpus()
        self._perf_mode: bool | None = None
        self._perf_mode_detail: str | None = None
        self._perf_test_cli: str | None = None  # which command-line generation the build answered with
        self.taskset: str | None = None
        self.runtime_version: str | None = None

    # ---- start: check the device, set it up, describe it ---------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        try:
            self._prepare()
        except AdbError as exc:
            raise DeviceUnfit(str(exc)) from exc
        f = self._facts
        return {
            "model": f["model"] or None,
            "soc": f["soc"] or None,
            "os": f"Android {f['release']}",
            "runtime": "onnxruntime" if self.runner == "python" else "onnxruntime_perf_test",
            "runtime_version": self.runtime_version,
            "cores": f["cores"],
            "extra": {
                "abi": f["abi"], "sdk": f["sdk"], "adb": self.conn.name, "runner": self.runner,
                "manufacturer": f["manufacturer"], "build_fingerprint": f["build_fingerprint"],
                "adb_user": f["user"], "cpu_max_khz": f["cpu_max_khz"], "governors": f["governors"],
                "taskset": self.taskset, "performance_mode": self._perf_mode,
                "perf_test_cli": self._perf_test_cli,
            },
        }  # fmt: skip

    def _prepare(self) -> None:
        if self._ready:
            return
        prop = self.conn.getprop
        cpus = device_state.read_cpus(self.conn)
        nproc = self.conn.shell("nproc").output.strip()
        self._facts = {
            "model": prop("ro.product.model"),
            "manufacturer": prop("ro.product.manufacturer"),
            "soc": prop("ro.soc.model") or prop("ro.board.platform"),
            "release": prop("ro.build.version.release"),
            "sdk": prop("ro.build.version.sdk"),
            "abi": prop("ro.product.cpu.abi"),
            "build_fingerprint": prop("ro.build.fingerprint"),
            "user": self.conn.shell("id -un 2>/dev/null || whoami").output.strip() or None,
            "cores": len(cpus.max_khz) or (int(nproc) if nproc.isdigit() else None),
            "cpu_max_khz": {str(k): v for k, v in sorted(cpus.max_khz.items())},
            "governors": {str(k): v for k, v in sorted(cpus.governors.items())},
        }
        self._cpus = cpus
        self.taskset, self._facts["taskset_source"] = self._resolve_taskset(1)
        self.conn.check(f"mkdir -p {self.workdir}/models")
        if self.runner == "python":
            self.runtime_version = self._check_python()
            for path in RUNNER_FILES:
                self.conn.push_if_changed(path, self.workdir)
        else:
            self.runtime_version = self._install_perf_test()
        if self.fixed_performance:  # Android 11+: steadier clocks without root; refused on some builds
            res = self.conn.shell("cmd power set-fixed-performance-mode-enabled true")
            self._perf_mode = res.returncode == 0 and "rror" not in res.output and "xception" not in res.output
            self._perf_mode_detail = (
                None if self._perf_mode else (res.output.strip()[-200:] or f"exit {res.returncode}")
            )
            if not self._perf_mode:
                log.warning("fixed performance mode unavailable (%s): clocks may vary", self._perf_mode_detail)
        self._ready = True

    def _resolve_taskset(self, threads: int) -> tuple[str | None, str | None]:
        """The mask for a run of `threads` threads: `auto` takes at least that many cores, fastest first
        (Cpus.fastest_cores_mask), so the threads never share cores while faster ones sit idle."""
        option = (self.taskset_option or "none").lower()
        if option == "none":
            return None, None
        if option == "auto":
            mask = self._cpus.fastest_cores_mask(threads)
            if not mask:
                return None, "cores indistinguishable: not pinned"
            many = f"at least {threads} for {threads} threads" if threads > 0 else "all for onnxruntime's default"
            return mask, f"auto: the fastest cores by cpuinfo_max_freq, whole clusters, {many}"
        return self.taskset_option, "given"

    def _pin_for(self, threads: int) -> None:
        """Set the mask `_pin()` applies and the context records, for this batch's (or job's) thread count."""
        self.taskset, self._facts["taskset_source"] = self._resolve_taskset(threads)

    def _check_python(self) -> str:
        who = f"{self._facts['model'] or 'the device'} ({self.conn.name})"
        if self.conn.shell("command -v python3").returncode != 0:
            raise DeviceUnfit(
                f"{who} has no python3 in its adb shell, so the 'python' runner cannot run there. A stock phone "
                "has neither Python nor onnxruntime (Termux's Python is private to the Termux app). Use "
                "--runner perf-test with onnxruntime_perf_test built for Android (docs/agents/android.md), or "
                "a device whose shell has python3 with onnxruntime and numpy (a Linux board)."
            )
        res = self.conn.shell("python3 -c 'import numpy, onnxruntime; print(onnxruntime.__version__)' 2>&1")
        if res.returncode != 0:
            last = res.output.strip().splitlines()[-1:] or [f"exit {res.returncode}"]
            raise DeviceUnfit(
                f"python3 on {who} cannot import onnxruntime and numpy ({last[0]}). Install them there "
                "(`python3 -m pip install onnxruntime numpy`), or use --runner perf-test with "
                "onnxruntime_perf_test built for Android (docs/agents/android.md)."
            )
        return res.output.strip().splitlines()[-1]

    def _install_perf_test(self) -> str:
        assert self.perf_test_dir is not None
        try:
            files = build_files(self.perf_test_dir, self._facts["abi"])
        except PerfTestBuildError as exc:
            raise DeviceUnfit(str(exc)) from None
        version = build_version(self.perf_test_dir, self.given_version)
        if not version:
            raise DeviceUnfit(
                "onnxruntime_perf_test prints no version: pass --runtime-version X.Y.Z, or copy VERSION_NUMBER from "
                f"the root of the onnxruntime source you built into {self.perf_test_dir}"
            )
        for path in files:
            if self.conn.push_if_changed(path, self.workdir):
                log.info("pushed %s", path.name)
        self._push_text(VISITS_SH, "visits.sh")
        self.conn.check(f"chmod 755 {self.workdir}/{PERF_TEST}")
        res = self.conn.shell(f"cd {self.workdir} && LD_LIBRARY_PATH=. ./{PERF_TEST} {PROBE_ARGS} 2>&1")
        self._perf_test_cli = probe_generation(res.output)
        if self._perf_test_cli is None:
            raise DeviceUnfit(f"onnxruntime_perf_test does not start on {self.conn.name} (`{PERF_TEST} {PROBE_ARGS}` "
                              f"printed no usage, exit {res.returncode}): {res.output.strip()[-400:]}")  # fmt: skip
        return version

    def _push_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            self.conn.push_if_changed(path, self.workdir)

    # ---- models ---------------------------------------------------------------------------------------------
    def _sync_models(self, models: dict[str, Path]) -> dict[str, str]:
        """Push each model the device does not already hold (by SHA-256); models stay cached on the device
        under their checksum, so a retried or repeated batch sends nothing. Returns key -> path in workdir."""
        names = {key: f"{sha256_file(path)}.onnx" for key, path in models.items()}
        wanted = sorted(set(names.values()))
        have: dict[str, str] = {}
        for start in range(0, len(wanted), 100):  # short command lines, whatever the device's adbd accepts
            have |= self.conn.sha256sums(f"{self.workdir}/models", wanted[start : start + 100])
        pushed = 0
        for key, name in names.items():
            if have.get(name) != name.removesuffix(".onnx"):
                self.conn.push(models[key], f"{self.workdir}/models/{name}")
                have[name] = name.removesuffix(".onnx")
                pushed += 1
        log.info("models on the device: %d pushed, %d already there", pushed, len(wanted) - pushed)
        return {key: f"models/{name}" for key, name in names.items()}

    def _pin(self) -> str:
        return f"taskset {shlex.quote(self.taskset)} " if self.taskset else ""

    # ---- a batch ---------------------------------------------------------------------------------------------
    def measure_batch(
        self, models: dict[str, Path], plan: BatchPlan, stop: threading.Event | None = None
    ) -> dict[str, Timing | MeasurementError]:
        """Once `stop` is set, the batch ends at the next round (python runner) or visit (perf-test): a batch
        of separate visits can last hours, and what it measured so far cannot be reported (a result has every
        round), so only the models that failed come back; the agent gives the others back."""
        stop = stop or threading.Event()
        try:
            self._prepare()
            self._pin_for(plan.threads)
            remote = self._sync_models(models)
            before = device_state.wait_until_cool(self.conn, max_wait_s=self.thermal_wait_s,
                                                  poll_s=self.thermal_poll_s)  # fmt: skip
            if self.cooldown_s:
                time.sleep(self.cooldown_s)
            run = self._python_batch if self.runner == "python" else self._perf_test_batch
            out = run(remote, plan, stop)
            after = device_state.snapshot(self.conn)
        except (AdbError, DeviceUnfit) as exc:
            raise self._failure(exc) from exc
        context = self._context(plan.threads, before, after)
        for timing in out.values():
            if isinstance(timing, Timing):
                timing.context = timing.context | context
        return out

    def _failure(self, exc: AdbError | DeviceUnfit) -> Exception:
        """A lost link is the device going away, not the models failing: DeviceUnavailable, and the device is
        prepared afresh before the next batch (`reconnect`). Anything else fails the batch's models."""
        if isinstance(exc, AdbLinkError):
            self._ready = False
            return DeviceUnavailable(str(exc))
        return MeasurementError(str(exc))

    def reconnect(self) -> None:
        """Connect again and redo the preparation: after a reboot fixed performance mode is off and the
        governors may differ, so what the next results' context says is read again, not remembered. Raises
        DeviceUnavailable while the device is still away (or not yet usable)."""
        self.conn.close()
        self._ready = False
        try:
            self._prepare()
        except (AdbError, DeviceUnfit) as exc:
            raise DeviceUnavailable(str(exc)) from exc

    def _context(self, threads: int, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        return {
            "backend": "android",
            "runner": self.runner,
            "runtime_version": self.runtime_version,
            "threads": threads,
            "taskset": self.taskset,
            "taskset_source": self._facts.get("taskset_source"),
            "performance_mode": self._perf_mode,
            "performance_mode_detail": self._perf_mode_detail,
            "temperature_c": before.get("battery_temp_c"),
            "temperature_source": "battery (dumpsys battery), before the batch",
            "thermal_status_before": before.get("thermal_status"),
            "thermal_status_after": after.get("thermal_status"),
            "battery_temp_c_before": before.get("battery_temp_c"),
            "battery_temp_c_after": after.get("battery_temp_c"),
            "thermal_wait_s": before.get("thermal_wait_s"),
            "still_throttled": before.get("still_throttled"),
            "governors": self._facts.get("governors"),
            "cpu_max_khz": self._facts.get("cpu_max_khz"),
        }

    def _python_batch(
        self, remote: dict[str, str], plan: BatchPlan, stop: threading.Event
    ) -> dict[str, Timing | MeasurementError]:
        """One process for the whole batch. A process that dies while loading a model blames that model and
        the rest is measured again (as the local backend does); one that dies during the rounds fails all."""
        failed: dict[str, Timing | MeasurementError] = {}
        todo = dict(remote)
        while todo:

            def progress(text: str) -> None:
                log.info("batch %s", text)
                if stop.is_set():  # raised out of the stream, which closes it and so ends the runner
                    raise _Stopped()

            stream = BatchStream(list(todo), plan.rounds, on_progress=progress)
            request = {
                "batch": [{"id": key, "model": path} for key, path in todo.items()],
                "threads": plan.threads, "warmup": plan.warmup, "rounds": plan.rounds,
                "runs_per_round": plan.runs_per_round, "seed": plan.seed,
            }  # fmt: skip
            self._push_text(json.dumps(request), "request.json")
            cmd = f"cd {self.workdir} && {self._pin()}python3 ort_runner.py --batch request.json 2>&1"
            try:
                rc = self.conn.stream(cmd, stream.feed, idle_timeout_s=self.run_timeout_s)
            except _Stopped:
                log.warning("batch stopped after a round: giving it back")
                return failed | {k: v for k, v in stream.results.items() if isinstance(v, MeasurementError)}
            if stream.done:
                return failed | stream.finish({})
            noise = " | ".join(stream.noise[-3:]) or "no output"
            loading = stream.first_unsettled()
            if loading is None:
                err = MeasurementError(f"the runner died (exit {rc}) during the rounds: {noise}")
                return failed | {key: err for key in todo}
            failed[loading] = MeasurementError(f"the runner died (exit {rc}) loading this model: {noise}")
            del todo[loading]
        return failed

    def _perf_test_batch(
        self, remote: dict[str, str], plan: BatchPlan, stop: threading.Event
    ) -> dict[str, Timing | MeasurementError]:
        """The rounds as separate visits: rounds.visit_orders decides the order, each visit is one perf_test
        process (its own untimed run, then runs_per_round timed runs). config.warmup is honoured as one
        discarded visit of `warmup` runs per model before round 1."""
        keys = list(remote)
        self._push_text("".join(f"{remote[k]}\n" for k in keys), "models.txt")
        failures: dict[str, Timing | MeasurementError] = {}
        visits: dict[str, list[dict[str, float]]] = {k: [] for k in keys}

        def run(indices: list[int], runs: int, keep: bool) -> None:
            if stop.is_set():
                raise _Stopped()
            live = [i for i in indices if keys[i] not in failures]
            if not live:
                return
            sections: dict[int, list[str]] = {}
            codes: dict[int, int] = {}
            current: list[int | None] = [None]

            def on_line(line: str) -> None:
                if line.startswith("__DNAS_VISIT ") and stop.is_set():
                    raise _Stopped()  # closes the stream, which ends the visits on the device
                if line.startswith("__DNAS_VISIT "):
                    current[0] = int(line.split()[1])
                    sections[current[0]] = []
                elif line.startswith("__DNAS_RC "):
                    _, i, code = line.split()
                    codes[int(i)] = int(code)
                    current[0] = None
                elif current[0] is not None:
                    sections[current[0]].append(line)

            args = " ".join(str(i + 1) for i in live)  # sed counts lines from 1
            cmd = f"cd {self.workdir} && {self._pin()}sh visits.sh {runs} {plan.threads} models.txt {args}"
            self.conn.stream(cmd, on_line, idle_timeout_s=self.run_timeout_s)
            for i in live:
                key, text = keys[i], "\n".join(sections.get(i + 1, []))
                code = codes.get(i + 1)
                if code != 0:
                    failures[key] = MeasurementError(f"onnxruntime_perf_test exited {code}: {text[-500:]}")
                    continue
                try:
                    stats = parse_perf_test(text)
                except PerfTestParseError as exc:
                    failures[key] = MeasurementError(str(exc))
                    continue
                if keep:
                    visits[key].append(stats)

        try:
            if plan.warmup > 0:
                run(list(range(len(keys))), plan.warmup, keep=False)
            for r, order in enumerate(rounds.visit_orders(len(keys), plan.rounds, plan.seed)):
                run(order, plan.runs_per_round, keep=True)
                log.info("batch round %d/%d (separate visits)", r + 1, plan.rounds)
        except _Stopped:
            log.warning("batch stopped at a visit: giving it back")
            return dict(failures)
        context = {
            "runtime": "onnxruntime_perf_test",
            "method": "separate visits",
            "estimator": rounds.ESTIMATOR,
            "rounds": plan.rounds,
            "runs_per_round": plan.runs_per_round,
            "seed": plan.seed,
            "warmup": plan.warmup,
            "warmup_method": "one discarded visit of `warmup` runs per model before round 1 (every visit is its "
            "own process, so nothing stays warm between visits but the device's caches and clocks)",
            "untimed_runs_per_visit": 1,
            "spinning": "stopped between runs (-Z)",
            "statistics": "printed by the tool itself (-s)",
            "fields": FIELDS,
            "batch_models": len(keys),
        }
        out: dict[str, Timing | MeasurementError] = dict(failures)
        for key in keys:
            if key in failures:
                continue
            summary = summarise_visits(visits[key], plan.runs_per_round)
            ctx = context | {
                "visit_min_us": [v.get("min_us") for v in visits[key]],
                "visit_mean_us": [v.get("mean_us") for v in visits[key]],
            }
            out[key] = Timing(summary=summary, context=ctx)
        return out

    # ---- protocol 1: one model, one block of runs -------------------------------------------------------------
    def measure(self, model: Path, *, threads: int, warmup: int, runs: int) -> Timing:
        try:
            self._prepare()
            self._pin_for(threads)
            remote = self._sync_models({"m": model})["m"]
            before = device_state.wait_until_cool(self.conn, max_wait_s=self.thermal_wait_s,
                                                  poll_s=self.thermal_poll_s)  # fmt: skip
            if self.cooldown_s:
                time.sleep(self.cooldown_s)
            timing = self._run_one(remote, threads, warmup, runs)
            after = device_state.snapshot(self.conn)
        except (AdbError, DeviceUnfit) as exc:
            raise self._failure(exc) from exc
        timing.context = timing.context | self._context(threads, before, after)
        return timing

    def _run_one(self, remote: str, threads: int, warmup: int, runs: int) -> Timing:
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
            return Timing(samples_us=out["samples_us"], context=out["context"])
        # -s: without it the tool prints only the average, no percentiles (its README: "Show statistics result").
        cmd = (f"cd {self.workdir} && LD_LIBRARY_PATH=. {self._pin()}./{PERF_TEST} -e cpu -m times "
               f"-r {runs} -x {threads} -s -Z -I {shlex.quote(remote)}")  # fmt: skip
        res = self.conn.shell(cmd, timeout_s=self.run_timeout_s)
        if res.returncode != 0:
            raise MeasurementError(f"onnxruntime_perf_test exited {res.returncode}: {res.output[-500:]}")
        try:
            stats = parse_perf_test(res.output)
        except PerfTestParseError as exc:
            raise MeasurementError(str(exc)) from None
        context = {
            "runtime": "onnxruntime_perf_test", "method": "block", "runs": runs,
            "warmup": 1, "warmup_note": f"config.warmup={warmup} not applied: perf_test does one untimed run itself",
            "fields": {"p10_us": "perf_test's minimum (it prints no P10)",
                       "std_us": "estimated from P90 - P50 as for a normal distribution (it prints no spread)"},
        }  # fmt: skip
        return Timing(summary=perf_test_summary(stats), context=context)

    def close(self) -> None:
        try:
            if self._perf_mode:  # leave the phone as we found it
                self.conn.shell("cmd power set-fixed-performance-mode-enabled false")
                self._perf_mode = False
        except AdbError as exc:
            log.warning("could not switch fixed performance mode back off: %s", exc)
        finally:
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
