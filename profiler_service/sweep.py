"""The sweep: what must happen even if the worker that should have done it died.

Publishing a run is a transaction after the last result's: a worker killed between the two, or a publish
that lost too many races for the version number, would leave a run `running` forever with every op
measured. So every worker also sweeps, at start and then every `sweep_seconds`:
1. jobs whose lease expired on their last attempt are failed (the device keeps dying on them:
   `queue.fail_exhausted_leases`);
2. runs whose every op is measured are published (`lifecycle.publish_run`, safe to race: the status flip
   is guarded, so two workers never publish one run twice);
3. runs whose every op is measured or failed, with at least one failed, are stored as `failed`
   (`lifecycle.settle_failed_runs`).
The sweep only decides when; what each step writes lives in the queue and the lifecycle modules.
Each step reads first and writes only when it found something: an idle service makes no writes, which on
SQLite would each take the single writer lock.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

from sqlalchemy.orm import sessionmaker
from starlette.concurrency import run_in_threadpool

from profiler_service.lifecycle import complete_runs, publish_run, settle_failed_runs
from profiler_service.queue import fail_exhausted_leases
from profiler_service.settings import ServiceSettings

log = logging.getLogger("dnas.service.sweep")


@dataclass
class SweepReport:
    leases_failed: int = 0
    published: list[int] = field(default_factory=list)
    failed_runs: list[int] = field(default_factory=list)


def sweep_once(sessions: sessionmaker) -> SweepReport:
    report = SweepReport()
    with sessions() as session:
        report.leases_failed = fail_exhausted_leases(session)
        for run_id in complete_runs(session):
            if publish_run(session, run_id) is not None:
                report.published.append(run_id)
        session.rollback()
        report.failed_runs = settle_failed_runs(session)
    if report.leases_failed or report.published or report.failed_runs:
        log.info("sweep: %d dead leases failed, runs published %s, runs failed %s",
                 report.leases_failed, report.published, report.failed_runs)  # fmt: skip
    return report


async def run_sweeps(sessions: sessionmaker, settings: ServiceSettings) -> None:
    """At start (a restarted service finishes what a dead one left), then every `sweep_seconds`, jittered
    so the workers of one service spread out. Never dies: a database outage is logged and retried."""
    while True:
        try:
            await run_in_threadpool(sweep_once, sessions)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the sweep is a safety net: it must outlive any one failure
            log.warning("sweep failed (retrying in %.0fs): %s", settings.sweep_seconds, exc)
        await asyncio.sleep(settings.sweep_seconds * random.uniform(0.75, 1.25))
