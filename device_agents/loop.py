"""The one agent loop every backend runs: fingerprint, lease, download, measure (with heartbeats), report.

Stopping: the first SIGINT/SIGTERM lets the current job finish and report; a second one gives the job back
(reported as a failure, so it is requeued at once instead of waiting for the lease to expire).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agents.backend import Backend, MeasurementError
from device_agents.client import AgentClient, ProtocolError
from device_agents.stats import summarise

log = logging.getLogger("dnas.agent")


@dataclass
class AgentStats:
    done: int = 0
    failed: int = 0
    measure_s: float = 0.0  # time spent inside the backend measuring, for overhead benches


class GiveBack(Exception):
    """Raised inside a job when the agent is told to stop now."""


class Agent:
    def __init__(
        self,
        client: AgentClient,
        backend: Backend,
        *,
        cache_dir: Path,
        wait_seconds: float = 20.0,
        max_jobs: int | None = None,
        exit_when_idle: bool = False,
    ) -> None:
        self.client = client
        self.backend = backend
        self.cache_dir = cache_dir
        self.wait_seconds = wait_seconds
        self.max_jobs = max_jobs
        self.exit_when_idle = exit_when_idle
        self.stopping = threading.Event()
        self.abort = threading.Event()
        self.stats = AgentStats()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            if self.stopping.is_set():
                log.warning("second %s: giving the current job back", signal.Signals(signum).name)
                self.abort.set()
            else:
                log.warning("%s: finishing the current job, then exiting", signal.Signals(signum).name)
                self.stopping.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def run(self) -> AgentStats:
        fingerprint = self.backend.fingerprint()
        self.client.report_fingerprint(fingerprint)
        log.info("agent %s ready: %s", self.backend.name, fingerprint.get("model"))
        try:
            while not self.stopping.is_set():
                if self.max_jobs is not None and self.stats.done + self.stats.failed >= self.max_jobs:
                    break
                job = self.client.lease(self.wait_seconds)
                if job is None:
                    if self.exit_when_idle:
                        break
                    continue
                self.run_job(job)
        finally:
            self.backend.close()
        log.info("agent stopped: %d done, %d failed", self.stats.done, self.stats.failed)
        return self.stats

    def run_job(self, job: dict[str, Any]) -> None:
        log.info("job %s (attempt %s): %s", job["job_id"], job["attempt"], job["op_key"])
        beat = _Heartbeat(self.client, job, interval=job["lease_seconds"] / 3)
        beat.start()
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
            summary = timing.summary if timing.summary is not None else summarise(timing.samples_us or [])
            stats = summary | {"context": timing.context | {"config": cfg}}
        except GiveBack:
            beat.stop()
            self._fail(job, "agent stopped before finishing; job given back")
            return
        except (MeasurementError, ValueError) as exc:
            beat.stop()
            log.error("job %s failed: %s", job["job_id"], exc)
            self._fail(job, str(exc))
            self.stats.failed += 1
            return
        beat.stop()
        if beat.lost:
            log.warning("job %s: lease lost while measuring; result discarded", job["job_id"])
            return
        try:
            ack = self.client.result(job, stats)
        except ProtocolError as exc:
            log.warning("job %s: result refused: %s", job["job_id"], exc.detail)
            return
        self.stats.done += 1
        log.info(
            "job %s done: median %.1f us%s",
            job["job_id"],
            stats["median_us"],
            " (replayed)" if ack.get("replayed") else "",
        )

    def _fail(self, job: dict[str, Any], reason: str) -> None:
        try:
            self.client.failure(job, reason)
        except ProtocolError as exc:
            log.warning("job %s: failure report refused: %s", job["job_id"], exc.detail)


class _Heartbeat:
    """Extends the lease while a long measurement runs; notices if the lease was lost."""

    def __init__(self, client: AgentClient, job: dict[str, Any], interval: float) -> None:
        self.client, self.job, self.interval = client, job, interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.client.heartbeat(self.job)
            except ProtocolError:
                self.lost = True
                return
            except ConnectionError as exc:
                log.warning("heartbeat failed: %s", exc)
