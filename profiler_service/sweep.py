"""The sweep: what must happen even if the worker that should have done it died.

Publishing a run is a transaction after the last result's: a worker killed between the two, or a publish
that lost too many races for the version number, would leave a run `running` forever with every op
measured. So every worker also sweeps, at start and then every `sweep_seconds`:
1. jobs whose lease expired on their last attempt are failed (the device keeps dying on them);
2. runs whose every op is measured are published (`tables.publish_run`, safe to race: the status flip
   is guarded, so two workers never publish one run twice);
3. runs whose every op is measured or failed, with at least one failed, are stored as `failed`.
Each step reads first and writes only when it found something: an idle service makes no writes, which on
SQLite would each take the single writer lock.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

from sqlalchemy import and_, exists, select, update
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from db.models import Job, ProfilingRun, RunOperator
from profiler_service.settings import ServiceSettings
from profiler_service.tables import complete_runs, publish_run
from profiler_service.timeutil import utcnow

log = logging.getLogger("dnas.service.sweep")

EXHAUSTED = "lease expired on the last attempt (agent lost?)"


@dataclass
class SweepReport:
    leases_failed: int = 0
    published: list[int] = field(default_factory=list)
    failed_runs: list[int] = field(default_factory=list)


def fail_exhausted_leases(session: Session) -> int:
    """A lease that expired on its last attempt ends the job. Read first; write only when one exists."""
    now = utcnow()
    dead = and_(Job.status == "leased", Job.lease_expires_at < now, Job.attempts >= Job.max_attempts)
    ids = list(session.scalars(select(Job.id).where(dead).limit(1000)))
    if not ids:
        session.rollback()
        return 0
    n = session.execute(
        update(Job).where(Job.id.in_(ids), dead).values(status="failed", finished_at=now, last_error=EXHAUSTED)
    ).rowcount
    session.commit()
    return n


def settle_failed_runs(session: Session, *, device_id: int | None = None) -> list[int]:
    """Store `failed` on running runs that can no longer complete: every op measured or failed, one failed."""
    from profiler_service.runs import run_progress  # runs imports tables; the sweep sits above both

    failed_job = exists().where(
        Job.device_id == ProfilingRun.device_id,
        Job.config_hash == ProfilingRun.config_hash,
        Job.op_key == RunOperator.op_key,
        Job.status == "failed",
    )
    query = (
        select(ProfilingRun.id)
        .join(RunOperator, RunOperator.run_id == ProfilingRun.id)
        .where(ProfilingRun.status == "running", failed_job)
        .distinct()
    )
    if device_id is not None:
        query = query.where(ProfilingRun.device_id == device_id)
    candidates = list(session.scalars(query))
    settled = []
    for run_id in candidates:
        run = session.get(ProfilingRun, run_id)
        if run is None:
            continue
        done, failed_rows = run_progress(session, run)
        if failed_rows and done + len(failed_rows) >= run.total:
            key, reason = failed_rows[0]
            changed = session.execute(
                update(ProfilingRun)
                .where(ProfilingRun.id == run_id, ProfilingRun.status == "running")
                .values(status="failed", finished_at=utcnow(),
                        reason=f"{len(failed_rows)} of {run.total} jobs failed; first: {key}: {reason}"[:4000])
            ).rowcount  # fmt: skip
            if changed:
                settled.append(run_id)
    if settled:
        session.commit()
    else:
        session.rollback()
    return settled


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
