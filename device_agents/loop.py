"""The one agent loop every backend runs: fingerprint, lease, download, measure (with heartbeats), report.

Backends that can hold many models open (`measure_batch`) speak protocol 2: they lease a batch of jobs of one
group (a profiling run, or a set of networks) and measure them together in interleaved rounds
(search/measurement/rounds.py). Others speak protocol 1: one job, one block of runs.

Stopping: the first SIGINT/SIGTERM lets the current job or batch finish and report; a second one gives it
back (reported as failures, so the jobs are requeued at once instead of waiting for the lease to expire). A
batch sees the second one at its next visit or round (an Android batch of separate visits can last hours):
what was final by then (models that failed, any measured in every round) is reported, the rest given back.

A device that goes away (DeviceUnavailable: a phone unplugged, off Wi-Fi, rebooting) fails no job: its work
is given back, and the agent leases nothing until the backend reconnects, trying with backoff.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agents.backend import (
    BatchBackend,
    BatchPlan,
    DeviceUnavailable,
    MeasurementError,
    Timing,
    precision_refusal,
)
from device_agents.client import AgentClient, ProtocolError
from device_agents.stats import summarise
from search.measurement.rounds import summarise_rounds

log = logging.getLogger("dnas.agent")

# Errors that end one job or batch but not the agent: the service or network went away, the device refused.
JOB_ERRORS = (MeasurementError, ValueError, ProtocolError, ConnectionError, OSError)


@dataclass
class AgentStats:
    done: int = 0
    failed: int = 0
    batches: int = 0
    measure_s: float = 0.0  # time spent inside the backend measuring, for overhead benches


class GiveBack(Exception):
    """Raised inside a job when the agent is told to stop now."""


class Agent:
    def __init__(
        self,
        client: AgentClient,
        backend: Any,
        *,
        cache_dir: Path,
        wait_seconds: float = 20.0,
        max_jobs: int | None = None,
        exit_when_idle: bool = False,
        batch_size: int = 500,
        protocol: int = 2,
    ) -> None:
        self.client = client
        self.backend = backend
        self.cache_dir = cache_dir
        self.wait_seconds = wait_seconds
        self.max_jobs = max_jobs
        self.exit_when_idle = exit_when_idle
        self.batch_size = batch_size
        self.batches = protocol >= 2 and isinstance(backend, BatchBackend)
        self.stopping = threading.Event()
        self.abort = threading.Event()
        self.stats = AgentStats()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            if self.stopping.is_set():
                log.warning("second %s: giving the current work back", signal.Signals(signum).name)
                self.abort.set()
            else:
                log.warning("%s: finishing the current work, then exiting", signal.Signals(signum).name)
                self.stopping.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def run(self) -> AgentStats:
        try:
            fingerprint = self.backend.fingerprint()  # may refuse a device that cannot run the backend's runner
            self.client.report_fingerprint(fingerprint)
            log.info(
                "agent %s ready (protocol %d): %s",
                self.backend.name,
                2 if self.batches else 1,
                fingerprint.get("model"),
            )
            while not self.stopping.is_set():
                remaining = None if self.max_jobs is None else self.max_jobs - self.stats.done - self.stats.failed
                if remaining is not None and remaining <= 0:
                    break
                try:
                    if self.batches:
                        size = self.batch_size if remaining is None else min(self.batch_size, remaining)
                        work = self.client.lease_batch(self.wait_seconds, size)
                    else:
                        work = self.client.lease(self.wait_seconds)
                except ConnectionError as exc:  # the network or service is away: an agent outlives an outage
                    log.warning("cannot lease: %s; trying again", exc)
                    self.stopping.wait(min(30.0, max(1.0, self.wait_seconds)))
                    continue
                if work is None:
                    if self.exit_when_idle:
                        break
                    continue
                if self.batches:
                    self.run_batch(work)
                else:
                    self.run_job(work)
        finally:
            self.backend.close()
        log.info("agent stopped: %d done, %d failed", self.stats.done, self.stats.failed)
        return self.stats

    # ---- protocol 2: a batch in interleaved rounds ---------------------------------------------------------
    def run_batch(self, batch: dict[str, Any]) -> None:
        jobs = {str(job["job_id"]): job for job in batch["jobs"]}
        token = batch["lease_token"]
        log.info("batch of %d jobs (%s)", len(jobs), batch.get("batch_group"))
        if batch.get("group_jobs", len(jobs)) > len(jobs):
            log.warning("the group has %d runnable jobs, this batch %d: it is measured in more than one session "
                        "(raise --batch-size)", batch["group_jobs"], len(jobs))  # fmt: skip
        failures: dict[str, str] = {}
        results: list[dict[str, Any]] = []
        precision = batch["config"].get("precision", "fp32")
        refused = precision_refusal(self.backend, precision)
        if refused:  # nothing is measured, so nothing can be stored under the wrong precision
            log.error("batch refused: %s", refused)
            for job in jobs.values():
                if not self._fail(job, refused):
                    break
                self.stats.failed += 1
            return
        every = batch["lease_seconds"] / 3
        gone: DeviceUnavailable | None = None
        with _Heartbeat(lambda: self.client.heartbeat_batch(token, within_s=0.8 * every), every) as beat:
            try:
                models = {}
                for key, job in jobs.items():
                    if self.abort.is_set():
                        raise GiveBack()
                    try:  # one model that cannot be fetched (corrupt, gone) fails alone
                        models[key] = self.client.download(job, self.cache_dir)
                    except (ValueError, ProtocolError) as exc:
                        failures[key] = f"model download: {exc}"
                plan = BatchPlan.from_config(batch["config"], batch["seed"])
                log.info("measuring %d models in %d rounds", len(models), plan.rounds)
                start = time.perf_counter()
                # Told to stop now, the backend ends at its next visit; what it finished is still reported.
                timings = self.backend.measure_batch(models, plan, stop=self.abort) if models else {}
                self.stats.measure_s += time.perf_counter() - start
                batch_ctx = {"config": batch["config"], "batch": {"jobs": len(jobs), "seed": batch["seed"]},
                             "precision": precision}  # fmt: skip
                for key, timing in timings.items():
                    try:
                        if isinstance(timing, MeasurementError):
                            raise timing
                        results.append({"job_id": int(key), **_statistics(timing),
                                        "context": timing.context | batch_ctx})  # fmt: skip
                    except (MeasurementError, ValueError) as exc:
                        failures[key] = str(exc)
            except GiveBack:
                self._give_back(jobs.values(), "agent stopped before finishing; batch given back")
                return
            except DeviceUnavailable as exc:  # not the jobs' fault: none is failed for it
                log.warning("device unavailable, batch given back: %s", exc)
                self._give_back(jobs.values(), f"device unavailable, batch given back: {exc}")
                gone = exc
            except JOB_ERRORS as exc:
                log.error("batch failed: %s", exc)
                failures |= {key: str(exc) for key in jobs if key not in failures}
                results = []
        if gone is not None:
            self._reconnect()
            return
        if beat.lost:
            log.warning("batch lease lost while measuring; %d results discarded", len(results))
            return
        self.stats.batches += 1
        reachable = True
        for key, reason in failures.items():  # first: a refused results POST must not leave these leased
            log.error("job %s failed: %s", key, reason)
            if reachable:  # once the service is unreachable, the leases running out give the rest back
                reachable = self._fail(jobs[key], reason)
            self.stats.failed += 1
        if results:
            self._report(token, jobs, results)
        settled = set(failures) | {str(item["job_id"]) for item in results}
        if rest := [job for key, job in jobs.items() if key not in settled]:  # the backend stopped early
            log.warning("batch stopped: %d jobs not measured in every round, given back", len(rest))
            if reachable:
                self._give_back(rest, "agent stopped before finishing; batch given back")

    def _report(self, token: str, jobs: dict[str, dict[str, Any]], results: list[dict[str, Any]]) -> None:
        """One POST for the batch. If the service refuses it whole (one item it finds invalid), each result is
        posted on its own, so the others are kept and the bad one fails with the service's reason."""
        try:
            acks = self.client.results(token, results)
        except ProtocolError as exc:
            if exc.status != 422:
                log.warning("batch results refused: %s", exc)
                return
            log.warning("batch results refused (%s); reporting them one by one", exc.detail[:200])
            acks = []
            for item in results:
                job = jobs[str(item["job_id"])]
                body = {k: v for k, v in item.items() if k != "job_id"}
                try:
                    acks.append(self.client.result(job, body))
                except ProtocolError as one:
                    self._fail(job, f"result refused by the service: {one.detail[:500]}")
                    self.stats.failed += 1
                except ConnectionError as exc:  # the service went away mid-fallback: the rest expire and re-run
                    log.warning("results not delivered after %d of %d: %s", len(acks), len(results), exc)
                    break
        except ConnectionError as exc:
            log.warning("batch results not delivered: %s", exc)
            return
        done = sum(1 for a in acks if a["status"] == "done")
        self.stats.done += done
        log.info("batch done: %d stored, %d refused", done, len(acks) - done)

    def _give_back(self, jobs: Any, reason: str) -> None:
        for job in jobs:
            if not self._fail(job, reason, give_back=True):
                break

    # ---- protocol 1: one job, one block of runs -----------------------------------------------------------
    def run_job(self, job: dict[str, Any]) -> None:
        log.info("job %s (attempt %s): %s", job["job_id"], job["attempt"], job["op_key"])
        precision = job["config"].get("precision", "fp32")
        refused = precision_refusal(self.backend, precision)
        if refused:
            log.error("job %s refused: %s", job["job_id"], refused)
            self._fail(job, refused)
            self.stats.failed += 1
            return
        every = job["lease_seconds"] / 3
        gone: DeviceUnavailable | None = None
        with _Heartbeat(lambda: self.client.heartbeat(job, within_s=0.8 * every), every) as beat:
            try:
                model = self.client.download(job, self.cache_dir)
                if self.abort.is_set():
                    raise GiveBack()
                cfg = job["config"]
                start = time.perf_counter()
                timing = self.backend.measure(model, threads=cfg["threads"], warmup=cfg["warmup"], runs=cfg["runs"])
                self.stats.measure_s += time.perf_counter() - start
                if self.abort.is_set():
                    raise GiveBack()
                stats = _statistics(timing) | {"context": timing.context | {"config": cfg, "precision": precision}}
            except GiveBack:
                self._fail(job, "agent stopped before finishing; job given back", give_back=True)
                return
            except DeviceUnavailable as exc:
                log.warning("device unavailable, job %s given back: %s", job["job_id"], exc)
                self._fail(job, f"device unavailable, job given back: {exc}", give_back=True)
                gone = exc
            except JOB_ERRORS as exc:
                log.error("job %s failed: %s", job["job_id"], exc)
                self._fail(job, str(exc))
                self.stats.failed += 1
                return
        if gone is not None:
            self._reconnect()
            return
        if beat.lost:
            log.warning("job %s: lease lost while measuring; result discarded", job["job_id"])
            return
        try:
            ack = self.client.result(job, stats)
        except (ProtocolError, ConnectionError) as exc:
            log.warning("job %s: result refused: %s", job["job_id"], exc)
            return
        self.stats.done += 1
        log.info("job %s done: median %.1f us%s", job["job_id"], stats["median_us"],
                 " (replayed)" if ack.get("replayed") else "")  # fmt: skip

    def _reconnect(self) -> None:
        """Lease nothing until the device answers again: the backend reconnects and prepares it afresh (after a
        reboot its clocks and modes are not what they were), tried 1 s after the loss, then doubling up to
        30 s. A stop request ends the wait."""
        delay = 1.0
        while not self.stopping.wait(delay):
            try:
                self.backend.reconnect()
            except DeviceUnavailable as exc:
                delay = min(2 * delay, 30.0)
                log.warning("device still unavailable (%s); next try in %.0f s", exc, delay)
                continue
            log.info("device back and prepared again; leasing")
            return

    def _fail(self, job: dict[str, Any], reason: str, *, give_back: bool = False) -> bool:
        """Report a failure (the job is requeued or failed with the reason), or with `give_back` a job not tried
        (requeued, its attempt returned); False if the service is unreachable."""
        try:
            self.client.failure(job, reason, give_back=give_back)
        except ProtocolError as exc:
            log.warning("job %s: failure report refused: %s", job["job_id"], exc)
        except ConnectionError as exc:
            log.warning("job %s: failure not reported (%s); its lease will run out and requeue it", job["job_id"], exc)
            return False
        return True


def _statistics(timing: Timing) -> dict[str, Any]:
    if timing.round_samples_us is not None:
        return summarise_rounds(timing.round_samples_us)
    if timing.summary is not None:
        return dict(timing.summary)
    return summarise(timing.samples_us or [])


class _Heartbeat:
    """Extends the lease while a long measurement runs; notices if the lease was lost. A context manager, so
    it stops on every way out of the job: a daemon heartbeat left running would keep a dead job leased."""

    def __init__(self, beat: Callable[[], None], interval: float) -> None:
        self.beat, self.interval = beat, interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except ProtocolError:
                self.lost = True
                return
            except ConnectionError as exc:
                log.warning("heartbeat failed: %s", exc)
            except Exception:  # a thread that died here would let the lease run out with nobody told
                log.exception("heartbeat failed unexpectedly; beating on")
